//! A bounds-checked reader over a file's bytes, shared by the hardened binary readers (GGUF,
//! CTranslate2): every read names what it reads, and reading past the end is a
//! [`Truncated`] error (each reader's own error type wraps it), never a panic.

/// Bytes read past the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    /// What was being read (`"value of `general.name`"`).
    pub what: String,
    /// Where the read started.
    pub offset: u64,
    /// Bytes it needed.
    pub needed: u64,
    /// Bytes left.
    pub available: u64,
}

/// A position in `bytes`.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// [`Truncated`] for `needed` bytes of `what` from here.
    pub(crate) fn truncated(&self, what: String, needed: u64) -> Truncated {
        Truncated {
            what,
            offset: self.pos as u64,
            needed,
            available: self.remaining(),
        }
    }

    pub(crate) fn take(
        &mut self,
        n: u64,
        what: &dyn Fn() -> String,
    ) -> Result<&'a [u8], Truncated> {
        if n > self.remaining() {
            return Err(self.truncated(what(), n));
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, Truncated> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_order_and_names_a_short_read() {
        let bytes = [1u8, 2, 0, 0, 0, 9];
        let mut c = Cursor::new(&bytes);
        assert_eq!(c.u8(&|| "a".into()), Ok(1));
        assert_eq!(c.u32(&|| "b".into()), Ok(2));
        assert_eq!(c.pos(), 5);
        let err = c.u32(&|| "the count".into()).unwrap_err();
        assert_eq!(
            err,
            Truncated {
                what: "the count".into(),
                offset: 5,
                needed: 4,
                available: 1
            }
        );
        // A failed read consumes nothing.
        assert_eq!(c.u8(&|| "c".into()), Ok(9));
        assert_eq!(c.remaining(), 0);
    }
}
