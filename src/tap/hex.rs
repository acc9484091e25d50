//! Hex dump lines (socat -x style, with stream offsets): ` 00000010  47 45 54 20 ...  |GET ...|`.

use std::io::Write;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Write `bytes` as hex lines of 16, the offset column counting from `offset`.
pub(crate) fn write_hex(out: &mut impl Write, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    // One line: " " + 8 offset + "  " + 16*3 + " " + "|" + 16 + "|\n" = 78 bytes.
    let mut line = [b' '; 80];
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let off = offset + (i as u64) * 16;
        let mut p = 1;
        for shift in (0..8).rev() {
            line[p] = HEX[((off >> (shift * 4)) & 0xf) as usize];
            p += 1;
        }
        p += 2;
        for j in 0..16 {
            if let Some(&b) = chunk.get(j) {
                line[p] = HEX[(b >> 4) as usize];
                line[p + 1] = HEX[(b & 0xf) as usize];
            } else {
                line[p] = b' ';
                line[p + 1] = b' ';
            }
            line[p + 2] = b' ';
            p += 3;
        }
        line[p] = b' ';
        line[p + 1] = b'|';
        p += 2;
        for &b in chunk {
            line[p] = if (0x20..0x7f).contains(&b) { b } else { b'.' };
            p += 1;
        }
        line[p] = b'|';
        line[p + 1] = b'\n';
        out.write_all(&line[..p + 2])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout() {
        let mut v = Vec::new();
        super::write_hex(&mut v, b"GET / HTTP/1.1\r\nHost", 16).unwrap();
        let s = String::from_utf8(v).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            " 00000010  47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a  |GET / HTTP/1.1..|"
        );
        assert_eq!(
            lines[1],
            " 00000020  48 6f 73 74                                      |Host|"
        );
    }
}
