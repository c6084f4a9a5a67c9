pub struct Export;
pub struct Server;
