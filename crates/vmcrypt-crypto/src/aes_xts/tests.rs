//! Tests of the AES-XTS kernel: IEEE P1619 (2007, D16) Annex B vectors, comparison with
//! OpenSSL's XTS for AES-128/256 and with a per-block reference for AES-192, on every
//! backend this CPU can run.
use super::{AesXts, Kernel};
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncrypt, KeyInit};
use openssl::symm::{Cipher, Crypter, Mode};
use vmcrypt_error::ErrorKind;

/// Every backend this CPU can run (always includes `Soft`).
fn backends() -> Vec<Kernel> {
    Kernel::ALL.into_iter().filter(|b| b.available()).collect()
}

/// Deterministic pseudo-random bytes (splitmix64).
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("valid hex")
}

/// Bytes 00..ff twice: the 512-byte plaintext of Annex B vectors 4 and 10-14.
fn ramp512() -> Vec<u8> {
    (0..512).map(|i| i as u8).collect()
}

fn check_vector(name: &str, key: &[u8], tweak: u64, ptx: &[u8], ctx: &[u8]) {
    for b in backends() {
        let xts = AesXts::with_kernel(key, b).unwrap();
        let mut buf = ptx.to_vec();
        xts.encrypt_sectors(tweak, 1, ptx.len(), &mut buf);
        assert_eq!(
            hex::encode(&buf),
            hex::encode(ctx),
            "{name} encrypt on {}",
            b.name()
        );
        xts.decrypt_sectors(tweak, 1, ptx.len(), &mut buf);
        assert_eq!(buf, ptx, "{name} decrypt on {}", b.name());
    }
}

#[test]
fn ieee1619_annex_b_vectors_1_to_3() {
    // Vector 1: XTS-AES-128, Key1 = Key2 = 0, data unit 0, 32 zero bytes.
    check_vector(
        "vector 1",
        &[0u8; 32],
        0,
        &[0u8; 32],
        &unhex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"),
    );
    // Vector 2: Key1 = 11.., Key2 = 22.., data unit 0x3333333333, PTX = 44..
    check_vector(
        "vector 2",
        &unhex("1111111111111111111111111111111122222222222222222222222222222222"),
        0x33_3333_3333,
        &[0x44u8; 32],
        &unhex("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
    );
    // Vector 3: Key1 = fffefd..f0, Key2 = 22.., data unit 0x3333333333, PTX = 44..
    check_vector(
        "vector 3",
        &unhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f022222222222222222222222222222222"),
        0x33_3333_3333,
        &[0x44u8; 32],
        &unhex("af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89"),
    );
}

#[test]
fn ieee1619_annex_b_vector_4() {
    // Vector 4: XTS-AES-128, 512-byte data unit 0.
    let key = unhex("27182818284590452353602874713526 31415926535897932384626433832795");
    let ctx = unhex(
        "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c
         c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412
         328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce
         93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265
         5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8
         a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f434
         1332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c
         5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e
         94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc
         1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3
         e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344
         b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd
         74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752
         afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203e
         bb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18d
         eb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568",
    );
    check_vector("vector 4", &key, 0, &ramp512(), &ctx);
}

/// Key of Annex B vectors 10-14 (XTS-AES-256).
const KEY_256: &str = "2718281828459045235360287471352662497757247093699959574966967627
                       3141592653589793238462643383279502884197169399375105820974944592";

#[test]
fn ieee1619_annex_b_vector_10() {
    // Vector 10: XTS-AES-256, 512-byte data unit 0xff.
    let ctx = unhex(
        "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b
         5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd
         5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0
         c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca
         2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0
         b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f
         93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec
         583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a
         84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1
         505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae
         9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29
         a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac
         6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f
         645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385
         1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa
         773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
    );
    check_vector("vector 10", &unhex(KEY_256), 0xff, &ramp512(), &ctx);
}

#[test]
fn ieee1619_annex_b_vector_11() {
    // Vector 11: XTS-AES-256, 512-byte data unit 0xffff.
    let ctx = unhex(
        "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11
         e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2
         469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d
         3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201
         3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179
         8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a
         aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6
         9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80
         470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a
         bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0
         18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75
         bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63
         094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a
         7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68
         6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090
         54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
    );
    check_vector("vector 11", &unhex(KEY_256), 0xffff, &ramp512(), &ctx);
}

#[test]
fn ieee1619_annex_b_vector_12() {
    // Vector 12: XTS-AES-256, 512-byte data unit 0xffffff.
    let ctx = unhex(
        "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200
         a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049
         9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8
         7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1
         9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf
         5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e
         62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6
         e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879
         a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0
         97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964
         c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d
         a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a
         f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2
         480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace
         231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36
         ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
    );
    check_vector("vector 12", &unhex(KEY_256), 0xff_ffff, &ramp512(), &ctx);
}

#[test]
fn ieee1619_annex_b_vector_13() {
    // Vector 13: XTS-AES-256, 512-byte data unit 0xffffffff.
    let ctx = unhex(
        "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5
         520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1
         c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac
         7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e
         919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3
         50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5
         69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9
         0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c
         1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053
         027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7
         5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df
         73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00
         77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460
         d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155
         6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c
         f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
    );
    check_vector("vector 13", &unhex(KEY_256), 0xffff_ffff, &ramp512(), &ctx);
}

#[test]
fn ieee1619_annex_b_vector_14() {
    // Vector 14: XTS-AES-256, 512-byte data unit 0xffffffffff.
    let ctx = unhex(
        "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23
         50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80
         8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604
         e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4
         a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b
         50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434
         631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8
         76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff
         3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b
         f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6
         85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa
         6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc
         e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a
         0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546
         81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de
         6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
    );
    check_vector(
        "vector 14",
        &unhex(KEY_256),
        0xff_ffff_ffff,
        &ramp512(),
        &ctx,
    );
}

/// XTS of `data` (sector by sector) through OpenSSL's EVP interface.
fn openssl_xts(
    encrypt: bool,
    key: &[u8],
    first: u64,
    step: u64,
    sector: usize,
    data: &[u8],
) -> Vec<u8> {
    let cipher = if key.len() == 32 {
        Cipher::aes_128_xts()
    } else {
        Cipher::aes_256_xts()
    };
    let mode = if encrypt {
        Mode::Encrypt
    } else {
        Mode::Decrypt
    };
    let mut out = Vec::with_capacity(data.len());
    for (k, chunk) in data.chunks(sector).enumerate() {
        let iv = (first.wrapping_add(step.wrapping_mul(k as u64)) as u128).to_le_bytes();
        let mut c = Crypter::new(cipher, mode, key, Some(&iv)).unwrap();
        c.pad(false);
        let mut buf = vec![0u8; chunk.len() + 32];
        let n = c.update(chunk, &mut buf).unwrap();
        let m = c.finalize(&mut buf[n..]).unwrap();
        out.extend_from_slice(&buf[..n + m]);
    }
    out
}

/// Tweak numbers that exercise carries: small, around 2^32 and near u64::MAX (wrapping).
const TWEAKS: [u64; 6] = [
    0,
    1,
    0xffff_fffe,
    0x1_0000_0000,
    u64::MAX - 2,
    0x0123_4567_89ab_cdef,
];
/// Sector sizes covering every code path: single blocks, masked 1..3-block tails,
/// whole 64-byte registers, 512-byte groups with remainders, and 4 KiB sectors.
const SECTORS: [usize; 10] = [16, 32, 48, 64, 80, 112, 512, 528, 1008, 4096];

#[test]
fn matches_openssl_aes128_and_aes256() {
    for key_len in [32, 64] {
        let mut key = pseudo_random(key_len as u64, key_len);
        key[key_len / 2] ^= 0x5a; // OpenSSL insists K1 != K2; make sure.
        let xtss: Vec<_> = backends()
            .into_iter()
            .map(|b| AesXts::with_kernel(&key, b).unwrap())
            .collect();
        for &sector in &SECTORS {
            for (i, &first) in TWEAKS.iter().enumerate() {
                // 1, 3 or 17 sectors: 17 crosses the 16-sector tweak batches.
                let count = [1, 3, 17][i % 3];
                let step = [1, 8][i % 2];
                let plain = pseudo_random(sector as u64 ^ first, sector * count);
                let want = openssl_xts(true, &key, first, step, sector, &plain);
                assert_eq!(openssl_xts(false, &key, first, step, sector, &want), plain);
                for xts in &xtss {
                    let mut buf = plain.clone();
                    xts.encrypt_sectors(first, step, sector, &mut buf);
                    let ctx = format!(
                        "{} key {key_len} sector {sector} tweak {first:#x}",
                        xts.backend()
                    );
                    assert!(buf == want, "encrypt mismatch: {ctx}");
                    xts.decrypt_sectors(first, step, sector, &mut buf);
                    assert!(buf == plain, "decrypt mismatch: {ctx}");
                }
            }
        }
    }
}

/// Per-block XTS with the `aes` crate: the reference for AES-192 (OpenSSL has no
/// aes-192-xts).
fn reference_xts192(key: &[u8], first: u64, sector: usize, data: &[u8]) -> Vec<u8> {
    let k1 = aes::Aes192::new_from_slice(&key[..24]).unwrap();
    let k2 = aes::Aes192::new_from_slice(&key[24..]).unwrap();
    let mut out = data.to_vec();
    for (k, chunk) in out.chunks_mut(sector).enumerate() {
        let mut t =
            GenericArray::clone_from_slice(&(first.wrapping_add(k as u64) as u128).to_le_bytes());
        k2.encrypt_block(&mut t);
        let mut tweak = u128::from_le_bytes(t.into());
        for block in chunk.chunks_mut(16) {
            let x = u128::from_le_bytes(block.try_into().unwrap()) ^ tweak;
            let mut b = GenericArray::clone_from_slice(&x.to_le_bytes());
            k1.encrypt_block(&mut b);
            block.copy_from_slice(&(u128::from_le_bytes(b.into()) ^ tweak).to_le_bytes());
            tweak = (tweak << 1) ^ ((tweak >> 127) * 0x87);
        }
    }
    out
}

#[test]
fn aes192_matches_reference() {
    let key = pseudo_random(192, 48);
    for b in backends() {
        let xts = AesXts::with_kernel(&key, b).unwrap();
        for &sector in &SECTORS {
            for &first in &TWEAKS {
                let plain = pseudo_random(first ^ 7, sector * 5);
                let want = reference_xts192(&key, first, sector, &plain);
                let mut buf = plain.clone();
                xts.encrypt_sectors(first, 1, sector, &mut buf);
                assert!(buf == want, "{} sector {sector} tweak {first:#x}", b.name());
                xts.decrypt_sectors(first, 1, sector, &mut buf);
                assert!(
                    buf == plain,
                    "{} decrypt sector {sector} tweak {first:#x}",
                    b.name()
                );
            }
        }
    }
}

#[test]
fn backends_agree_on_large_buffers() {
    for key_len in [32, 48, 64] {
        let key = pseudo_random(key_len as u64 + 1000, key_len);
        let plain = pseudo_random(99, 256 * 1024);
        for sector in [512, 4096] {
            let mut outputs = Vec::new();
            for b in backends() {
                let mut buf = plain.clone();
                AesXts::with_kernel(&key, b).unwrap().encrypt_sectors(
                    u64::MAX - 100,
                    1,
                    sector,
                    &mut buf,
                );
                outputs.push((b, buf));
            }
            for (b, out) in &outputs[1..] {
                assert!(
                    *out == outputs[0].1,
                    "{} differs from {}",
                    b.name(),
                    outputs[0].0.name()
                );
            }
        }
    }
}

#[test]
fn new_picks_an_available_backend() {
    let xts = AesXts::new(&[7u8; 64]).unwrap();
    let best = backends()[0];
    assert_eq!(xts.backend(), best.name());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes") {
        assert_ne!(xts.backend(), "soft");
    }
    let dbg = format!("{xts:?}");
    assert!(
        dbg.contains("key_bits: 256") && !dbg.contains("7, 7"),
        "{dbg}"
    );
}

#[test]
fn rejects_bad_key_lengths() {
    for len in [0, 16, 31, 33, 47, 63, 65, 128] {
        let err = AesXts::new(&vec![1u8; len]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(
            err.message().contains(&format!("{len} bytes")),
            "{}",
            err.message()
        );
    }
}

#[test]
fn empty_data_is_a_no_op() {
    for b in backends() {
        let xts = AesXts::with_kernel(&[3u8; 32], b).unwrap();
        xts.encrypt_sectors(5, 1, 512, &mut []);
        xts.decrypt_sectors(5, 1, 512, &mut []);
    }
}

#[test]
#[should_panic(expected = "AES-XTS: sector size")]
fn panics_on_partial_sector() {
    AesXts::new(&[1u8; 32])
        .unwrap()
        .encrypt_sectors(0, 1, 512, &mut [0u8; 500]);
}

#[test]
#[should_panic(expected = "AES-XTS: sector size")]
fn panics_on_unaligned_sector_size() {
    AesXts::new(&[1u8; 32])
        .unwrap()
        .encrypt_sectors(0, 1, 24, &mut [0u8; 48]);
}
