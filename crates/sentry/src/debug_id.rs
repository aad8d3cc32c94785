//! Sentry `debug_id`s for ELF images: derived from the GNU build-id, or from the first page
//! of `.text` when the image has no build-id. Matches what Sentry's `symbolic` library (and
//! so `sentry-cli debug-files upload`) computes for the same file. The byte-order rule and
//! worked examples are in `docs/sentry-format.md`, section "Debug ids".

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSection};

/// How many `.text` bytes the fallback hashes.
const TEXT_FALLBACK_BYTES: usize = 4096;

/// Format 16 bytes as a lowercase hyphenated UUID after the little-endian field swaps
/// (bytes 0-3, 4-5 and 6-7 reversed) when `little_endian`.
fn format_guid(mut b: [u8; 16], little_endian: bool) -> String {
    if little_endian {
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
    }
    uuid::Uuid::from_bytes(b).hyphenated().to_string()
}

/// The Sentry debug_id of an ELF image with GNU build-id `build_id`: the first 16 bytes
/// (zero-padded), field-swapped for little-endian images, as a hyphenated lowercase UUID.
pub fn debug_id_from_build_id(build_id: &[u8], little_endian: bool) -> String {
    let mut b = [0u8; 16];
    let n = build_id.len().min(16);
    b[..n].copy_from_slice(&build_id[..n]);
    format_guid(b, little_endian)
}

/// XOR of the first 4096 bytes of `.text` into 16 bytes (byte i goes to position i mod 16).
pub fn text_fallback_hash(text: &[u8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, byte) in text.iter().take(TEXT_FALLBACK_BYTES).enumerate() {
        b[i % 16] ^= byte;
    }
    b
}

/// The debug_id of an ELF image without a build-id, from its `.text` section bytes.
pub fn debug_id_from_text(text: &[u8], little_endian: bool) -> String {
    format_guid(text_fallback_hash(text), little_endian)
}

/// Identifiers of one ELF file as Sentry wants them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfIds {
    /// The debug_id (hyphenated UUID).
    pub debug_id: String,
    /// Lowercase hex of the full build-id, when there is one.
    pub code_id: Option<String>,
    /// `p_vaddr` of the first `PT_LOAD`.
    pub first_vaddr: u64,
}

/// Compute [`ElfIds`] from the bytes of an ELF file. None when `data` is not a 64-bit ELF
/// or has neither a build-id nor a `.text` section.
pub fn elf_ids(data: &[u8]) -> Option<ElfIds> {
    let file = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = file.endian();
    let little_endian = file.elf_header().is_little_endian();
    let first_vaddr = file
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map_or(0, |ph| ph.p_vaddr(endian));
    match file.build_id().ok().flatten() {
        Some(id) if !id.is_empty() => Some(ElfIds {
            debug_id: debug_id_from_build_id(id, little_endian),
            code_id: Some(id.iter().map(|b| format!("{b:02x}")).collect()),
            first_vaddr,
        }),
        _ => {
            let text = file.section_by_name(".text")?.data().ok()?;
            Some(ElfIds {
                debug_id: debug_id_from_text(text, little_endian),
                code_id: None,
                first_vaddr,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn doc_worked_examples() {
        let cases = [
            (
                "451caec77109ec4461b4b9baaa58833f530dec65",
                "c7ae1c45-0971-44ec-61b4-b9baaa58833f",
            ),
            (
                "68220ae2c65d65c1b6aaa12fa6765a6ec2f5f434",
                "e20a2268-5dc6-c165-b6aa-a12fa6765a6e",
            ),
            (
                "1c304742f114215453a8a777f6cdb3a2b8505e11",
                "4247301c-14f1-5421-53a8-a777f6cdb3a2",
            ),
        ];
        for (build_id, want) in cases {
            assert_eq!(debug_id_from_build_id(&unhex(build_id), true), want);
        }
    }

    #[test]
    fn short_build_id_is_zero_padded_and_big_endian_not_swapped() {
        assert_eq!(
            debug_id_from_build_id(&[1, 2, 3, 4, 5, 6, 7, 8], true),
            "04030201-0605-0807-0000-000000000000"
        );
        assert_eq!(
            debug_id_from_build_id(&unhex("451caec77109ec4461b4b9baaa58833f"), false),
            "451caec7-7109-ec44-61b4-b9baaa58833f"
        );
    }

    #[test]
    fn text_fallback_xors_first_page_only() {
        let mut text = vec![0u8; 5000];
        text[0] = 0x01;
        text[16] = 0x03; // folds onto position 0
        text[17] = 0xff; // position 1
        text[4100] = 0x77; // beyond the first 4096 bytes: ignored
        let h = text_fallback_hash(&text);
        assert_eq!(h[0], 0x02);
        assert_eq!(h[1], 0xff);
        assert!(h[2..].iter().all(|&b| b == 0));
        assert_eq!(
            debug_id_from_text(&text, true),
            "0000ff02-0000-0000-0000-000000000000"
        );
    }

    #[test]
    fn own_executable_ids() {
        let data = std::fs::read("/proc/self/exe").unwrap();
        let ids = elf_ids(&data).unwrap();
        let file = object::File::parse(&*data).unwrap();
        match file.build_id().unwrap() {
            Some(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                assert_eq!(ids.code_id.as_deref(), Some(hex.as_str()));
                assert_eq!(ids.debug_id, debug_id_from_build_id(b, true));
            }
            None => {
                let text = file.section_by_name(".text").unwrap().data().unwrap();
                assert_eq!(ids.debug_id, debug_id_from_text(text, true))
            }
        }
        assert_eq!(ids.debug_id.len(), 36);
        assert!(elf_ids(b"not an elf").is_none());
    }
}
