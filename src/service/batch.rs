//! `WrapBatch` and `UnwrapBatch`: many wraps or unwraps in one request.
//!
//! Each item goes through the single request's own path (grant, key state,
//! type, plaintext limit, encryption count and its reservation, automatic
//! rotation), so an item gets exactly the result and error code the same
//! `Wrap` or `Unwrap` would. What the batch adds is decided before any
//! item is worked on: the item count (1 to [`MAX_BATCH_ITEMS`]) and a
//! bound on the encoded answer, which must fit the frame limit; either
//! refuses the whole request. The audit gets one event per batch listing
//! every item's key, version and result (`HOSTKMS_BATCH_RESULTS`).

use agent_proto::ciphertext::OVERHEAD;
use agent_proto::key_name::MAX_LEN as MAX_KEY_NAME;
use agent_proto::{
    ErrorCode, ErrorReply, MAX_BATCH_ITEMS, Operation, Response, SecretBytes, UnwrapItem,
    Unwrapped, WrapItem,
};

use super::{Refusal, Service};
use crate::audit::{self, BatchItem, Subject};
use crate::peer::Peer;

/// The longest message an item's error carries, in bytes; a longer one is
/// cut (at a character boundary) and ends in "…". It bounds an error
/// item's share of the answer.
pub const MAX_ITEM_MESSAGE: usize = 512;

/// Bytes of the answer outside its items: the envelope's version and id,
/// the response variant and the item count, with room to spare.
const ANSWER_OVERHEAD: usize = 64;
/// Bytes of a `Result` variant tag.
const RESULT_TAG: usize = 4;
/// Bytes of a length prefix (strings, byte strings, sequences).
const LENGTH: usize = 8;
/// Bytes of an error item: the code (2) and the message with its length.
const ERROR_ITEM: usize = 2 + LENGTH + MAX_ITEM_MESSAGE;

impl Service {
    /// `WrapBatch`: every plaintext under the latest version of `key`.
    pub(super) async fn wrap_batch(
        &self,
        peer: &Peer,
        key: &str,
        items: Vec<WrapItem>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        // Every item would be denied alike: the whole request is.
        self.permit(peer, Operation::Wrap, key)?;
        check_count(items.len())?;
        // Wrapped: key name, version, ciphertext (plaintext and overhead).
        let bound = answer_bound(items.iter().map(|item| {
            (LENGTH + key.len() + 4 + LENGTH + OVERHEAD + item.plaintext.expose().len())
                .max(ERROR_ITEM)
        }));
        self.check_answer(Operation::WrapBatch, items.len(), bound)?;
        let mut results = Vec::with_capacity(items.len());
        let mut audited = Vec::with_capacity(items.len());
        for item in &items {
            let mut item_subject = Subject::default();
            item_subject.set_key(key);
            let result = self
                .wrap(
                    peer,
                    key,
                    item.plaintext.expose(),
                    &item.context,
                    &mut item_subject,
                )
                .await;
            let refusal = result.as_ref().err();
            audited.push(BatchItem::of(
                &item_subject,
                refusal.map(|r| r.code),
                refusal.and_then(|r| r.deletion_due),
            ));
            results.push(result.map_err(item_error));
        }
        if let Some(version) = latest_ok_version(&audited) {
            subject.set_version(version);
        }
        subject.set_batch(audited);
        Ok(Response::WrappedBatch(results))
    }

    /// `UnwrapBatch`: every ciphertext, each under the key it names; with
    /// `key`, each must belong to that key.
    pub(super) async fn unwrap_batch(
        &self,
        peer: &Peer,
        key: Option<&str>,
        items: Vec<UnwrapItem>,
        subject: &mut Subject,
    ) -> Result<Response, Refusal> {
        check_count(items.len())?;
        // Unwrapped: key name, version, plaintext (the ciphertext less its
        // overhead). The name is the longest a key may have: the one the
        // ciphertext names is not looked at before the item's grant is.
        let bound = answer_bound(items.iter().map(|item| {
            let plaintext = item.ciphertext.as_bytes().len().saturating_sub(OVERHEAD);
            (LENGTH + MAX_KEY_NAME + 4 + LENGTH + plaintext).max(ERROR_ITEM)
        }));
        self.check_answer(Operation::UnwrapBatch, items.len(), bound)?;
        let mut results = Vec::with_capacity(items.len());
        let mut audited = Vec::with_capacity(items.len());
        for item in &items {
            let mut item_subject = Subject::default();
            if let Some(key) = key {
                item_subject.set_key(key);
            }
            let result = self.decrypt(
                peer,
                Operation::Unwrap,
                &item.ciphertext,
                &item.context,
                key,
                &mut item_subject,
            );
            let refusal = result.as_ref().err();
            audited.push(BatchItem::of(
                &item_subject,
                refusal.map(|r| r.code),
                refusal.and_then(|r| r.deletion_due),
            ));
            results.push(
                result
                    .map(|mut decrypted| Unwrapped {
                        key: decrypted.key.name().to_string(),
                        version: decrypted.version,
                        // Moves the buffer, leaving no unwiped copy behind.
                        plaintext: SecretBytes::new(std::mem::take(&mut *decrypted.plaintext)),
                    })
                    .map_err(item_error),
            );
        }
        subject.set_batch(audited);
        Ok(Response::UnwrappedBatch(results))
    }

    /// Refuses a batch whose answer could exceed the frame limit.
    fn check_answer(&self, op: Operation, items: usize, bound: usize) -> Result<(), Refusal> {
        let max_frame = self.limits.load().max_frame;
        if bound <= usize::try_from(max_frame).unwrap_or(usize::MAX) {
            return Ok(());
        }
        Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!(
                "the answer to this {op} of {items} items could take {bound} bytes, more than \
                 the frame limit of {max_frame} bytes (max_frame); nothing was done. Send the \
                 items in smaller batches"
            ),
        ))
    }
}

/// Refuses an empty batch or one of more than [`MAX_BATCH_ITEMS`] items.
fn check_count(items: usize) -> Result<(), Refusal> {
    if (1..=MAX_BATCH_ITEMS).contains(&items) {
        return Ok(());
    }
    Err(Refusal::new(
        ErrorCode::InvalidArgument,
        format!(
            "a batch holds 1 to {MAX_BATCH_ITEMS} items (MAX_BATCH_ITEMS), this one {items}; \
             nothing was done. Send the items in smaller batches"
        ),
    ))
}

/// The most bytes an answer with items of at most these sizes takes.
fn answer_bound(items: impl Iterator<Item = usize>) -> usize {
    items.fold(ANSWER_OVERHEAD, |total, item| {
        total.saturating_add(RESULT_TAG + item)
    })
}

/// An item's refusal as its slot carries it, the message cut to
/// [`MAX_ITEM_MESSAGE`] bytes.
fn item_error(refusal: Refusal) -> ErrorReply {
    let Refusal {
        code, mut message, ..
    } = refusal;
    if message.len() > MAX_ITEM_MESSAGE {
        const ELLIPSIS: &str = "…";
        let mut end = MAX_ITEM_MESSAGE - ELLIPSIS.len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(ELLIPSIS);
    }
    ErrorReply { code, message }
}

/// The newest version any item was wrapped under: the batch event's
/// `HOSTKMS_KEY_VERSION`.
fn latest_ok_version(items: &[BatchItem]) -> Option<u32> {
    items
        .iter()
        .filter(|item| item.result.is_none())
        .filter_map(|item| item.version)
        .max()
}

impl Service {
    /// Raises the alerts the refused items of a batch call for, as the same
    /// refusals one by one would (a batch's own refusal is counted with the
    /// request): repeated denials and invalid ciphertexts, and the use of a
    /// key pending deletion.
    pub(super) fn raise_batch_item_alerts(&self, peer: &Peer, op: Operation, subject: &Subject) {
        let Some(items) = subject.batch() else {
            return;
        };
        for item in items {
            let Some(code) = item.result else {
                continue;
            };
            if let Some(alert) = self.monitor.note_refusal(peer.uid, code) {
                audit::peer_alert(&alert);
            }
            if code == ErrorCode::KeyPendingDeletion {
                if let Some(key) = item.key.as_deref() {
                    self.pending_deletion_used(peer, key, item.deletion_due, op);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_item_message_is_cut_at_a_character_boundary() {
        let refusal = Refusal::new(ErrorCode::KeyNotFound, "é".repeat(600));
        let reply = item_error(refusal);
        assert!(reply.message.len() <= MAX_ITEM_MESSAGE);
        assert!(reply.message.ends_with('…'));
        let short = item_error(Refusal::new(ErrorCode::KeyNotFound, "gone"));
        assert_eq!(short.message, "gone");
    }

    #[test]
    fn counts_outside_one_to_the_limit_are_refused_naming_it() {
        assert!(check_count(1).is_ok());
        assert!(check_count(MAX_BATCH_ITEMS).is_ok());
        for count in [0, MAX_BATCH_ITEMS + 1] {
            let refusal = check_count(count).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::InvalidArgument);
            assert!(refusal.message.contains("1000"), "{}", refusal.message);
        }
    }

    #[test]
    fn the_bound_covers_the_real_encoding_of_a_largest_answer() {
        let key = "k".repeat(MAX_KEY_NAME);
        let wrapped = agent_proto::Wrapped {
            key: key.clone(),
            version: u32::MAX,
            ciphertext: agent_proto::Ciphertext::new(vec![0; OVERHEAD + 100]),
        };
        let errors = ErrorReply {
            code: ErrorCode::PermissionDenied,
            message: "x".repeat(MAX_ITEM_MESSAGE),
        };
        let answer = Response::WrappedBatch(vec![Ok(wrapped), Err(errors)]);
        let envelope = agent_proto::Envelope {
            proto: agent_proto::PROTOCOL_VERSION,
            id: u64::MAX,
            op: answer,
        };
        let frame = agent_proto::codec::encode_frame(&envelope, u32::MAX).unwrap();
        let item = (LENGTH + key.len() + 4 + LENGTH + OVERHEAD + 100).max(ERROR_ITEM);
        let bound = answer_bound([item, item].into_iter());
        assert!(frame.len() - 4 <= bound, "{} > {bound}", frame.len() - 4);
    }
}
