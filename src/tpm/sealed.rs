//! The sealed object's blobs, in the TPM2B marshalled form that
//! `tpm2_load -u root.pub -r root.priv` reads.

use tss_esapi::structures::{Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};

/// The public (TPM2B_PUBLIC) and private (TPM2B_PRIVATE) parts of a sealed
/// object. The private part is encrypted by the TPM under its storage primary
/// and useless without that TPM.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlobs {
    public: Vec<u8>,
    private: Vec<u8>,
}

impl std::fmt::Debug for SealedBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedBlobs {{ public: {} bytes, private: {} bytes }}",
            self.public.len(),
            self.private.len()
        )
    }
}

/// Which of the two blobs a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The TPM2B_PUBLIC blob.
    Public,
    /// The TPM2B_PRIVATE blob.
    Private,
}

/// A blob that is not a well-formed TPM2B structure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The size prefix and the length disagree: a truncated or padded file.
    #[error(
        "{len} bytes, but its TPM2B size prefix says {declared} + 2; the file is truncated or corrupt"
    )]
    Length {
        /// Which blob.
        part: Part,
        /// Bytes present.
        len: usize,
        /// Size the prefix announces.
        declared: usize,
    },
    /// The public area does not parse.
    #[error("not a valid TPM2B_PUBLIC structure ({0})")]
    Public(String),
    /// The private area is too large for a TPM2B_PRIVATE.
    #[error("not a valid TPM2B_PRIVATE structure ({0})")]
    Private(String),
}

impl BlobError {
    /// The blob the problem is in.
    pub fn part(&self) -> Part {
        match self {
            BlobError::Length { part, .. } => *part,
            BlobError::Public(_) => Part::Public,
            BlobError::Private(_) => Part::Private,
        }
    }
}

/// Checks the 2-byte big-endian size prefix and returns the contents.
fn tpm2b_contents(part: Part, bytes: &[u8]) -> Result<&[u8], BlobError> {
    let declared = match bytes {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => {
            return Err(BlobError::Length {
                part,
                len: bytes.len(),
                declared: 0,
            });
        }
    };
    if bytes.len() != declared + 2 || declared == 0 {
        return Err(BlobError::Length {
            part,
            len: bytes.len(),
            declared,
        });
    }
    Ok(&bytes[2..])
}

impl SealedBlobs {
    /// Validates blobs read from disk: both TPM2B framings, and a public
    /// area that unmarshals.
    pub fn parse(public: Vec<u8>, private: Vec<u8>) -> Result<SealedBlobs, BlobError> {
        let blobs = SealedBlobs { public, private };
        blobs.to_tpm()?;
        Ok(blobs)
    }

    /// The blobs of a freshly created object.
    pub(super) fn from_tpm(public: Public, private: &Private) -> Result<SealedBlobs, BlobError> {
        let public = PublicBuffer::try_from(public)
            .and_then(|buffer| buffer.marshall())
            .map_err(|e| BlobError::Public(e.to_string()))?;
        let size = u16::try_from(private.len())
            .map_err(|_| BlobError::Private(format!("{} bytes is too long", private.len())))?;
        let mut marshalled = size.to_be_bytes().to_vec();
        marshalled.extend_from_slice(private.value());
        Ok(SealedBlobs {
            public,
            private: marshalled,
        })
    }

    /// The blobs as tss-esapi structures, ready for `Load`.
    pub(super) fn to_tpm(&self) -> Result<(Public, Private), BlobError> {
        tpm2b_contents(Part::Public, &self.public)?;
        let contents = tpm2b_contents(Part::Private, &self.private)?;
        let public = PublicBuffer::unmarshall(&self.public)
            .and_then(Public::try_from)
            .map_err(|e| BlobError::Public(e.to_string()))?;
        let private =
            Private::try_from(contents.to_vec()).map_err(|e| BlobError::Private(e.to_string()))?;
        Ok((public, private))
    }

    /// The sealed object's authPolicy (empty: none) and whether it opens
    /// with its authValue (userWithAuth): what it was sealed to, as its
    /// public area says (the TPM binds the public area to the private one).
    pub fn authorization(&self) -> Result<(Vec<u8>, bool), BlobError> {
        let (public, _) = self.to_tpm()?;
        match public {
            Public::KeyedHash {
                auth_policy,
                object_attributes,
                ..
            } => Ok((
                auth_policy.value().to_vec(),
                object_attributes.user_with_auth(),
            )),
            _ => Err(BlobError::Public(
                "not a sealed data object (keyedhash)".to_string(),
            )),
        }
    }

    /// The TPM2B_PUBLIC bytes, as written to `root.pub`.
    pub fn public_bytes(&self) -> &[u8] {
        &self.public
    }

    /// The TPM2B_PRIVATE bytes, as written to `root.priv`.
    pub fn private_bytes(&self) -> &[u8] {
        &self.private
    }
}
