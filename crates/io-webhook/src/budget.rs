//! How much memory requests in flight may hold: one byte budget for the server, charged by the bytes of
//! each body as it arrives and, before parsing, by an estimate of what the parsed JSON will take. A request
//! that does not fit gets a 503 at once instead of waiting (waiting requests would hold their part of the
//! budget and starve the small reviews the API server sends).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Nesting depth accepted in a body; `serde_json` stops at 128 as well, this names the problem first.
pub const MAX_DEPTH: usize = 128;

/// Bytes a parsed JSON value takes beyond its text, on average: a `serde_json::Value` is 32 bytes, plus
/// the spare capacity of the vector or map that holds it.
const BYTES_PER_VALUE: usize = 40;
/// Parsed copies alive at once while a review is validated or converted (the review as read, the object
/// converted to the storage version).
const PARSED_COPIES: usize = 2;

/// A memory budget shared by the requests of one server.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// What one request holds of the budget; returned when dropped.
#[derive(Debug)]
pub struct Charge {
    bytes: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    held: usize,
}

impl MemoryBudget {
    /// A budget of `total` bytes.
    pub fn new(total: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    /// The size of the budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not held by any request.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// A charge of nothing yet.
    pub fn charge(&self) -> Charge {
        Charge {
            bytes: self.bytes.clone(),
            permit: None,
            held: 0,
        }
    }
}

impl Charge {
    /// Takes `more` bytes of the budget; `false` (and nothing taken) when they are not available now.
    pub fn grow(&mut self, more: usize) -> bool {
        if more == 0 {
            return true;
        }
        let Ok(permits) = u32::try_from(more) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                match &mut self.permit {
                    Some(held) => held.merge(permit),
                    None => self.permit = Some(permit),
                }
                self.held += more;
                true
            }
            Err(_) => false,
        }
    }

    /// Grows the charge to `total` bytes (never shrinks it).
    pub fn grow_to(&mut self, total: usize) -> bool {
        self.grow(total.saturating_sub(self.held))
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

/// The shape of a JSON text, found without parsing or allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonShape {
    /// Values, counted by their separators and brackets (an upper bound of what a parser allocates).
    pub values: usize,
    /// The deepest nesting of arrays and objects.
    pub depth: usize,
}

impl JsonShape {
    /// Scans `text`: counts brackets, commas and colons outside strings. Invalid JSON is scanned too;
    /// the parser rejects it afterwards.
    pub fn of(text: &[u8]) -> Self {
        let (mut values, mut depth, mut deepest) = (1usize, 0usize, 0usize);
        let (mut in_string, mut escaped) = (false, false);
        for &byte in text {
            if in_string {
                match byte {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    values += 1;
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b',' | b':' => values += 1,
                _ => {}
            }
        }
        Self {
            values,
            depth: deepest,
        }
    }

    /// Bytes that parsing and validating a body of `len` bytes with this shape may take, the body
    /// included.
    pub fn memory_estimate(&self, len: usize) -> usize {
        let parsed = len.saturating_add(self.values.saturating_mul(BYTES_PER_VALUE));
        len.saturating_add(parsed.saturating_mul(PARSED_COPIES))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_counts_values_and_depth_outside_strings() {
        let shape = JsonShape::of(br#"{"a":[1,2,{"b":"x,y:[{"}],"c":"\"]"}"#);
        assert_eq!(shape.depth, 3);
        // 1 + { + : + [ + , + , + { + : + , + :
        assert_eq!(shape.values, 10);
        assert_eq!(JsonShape::of(&[b'['; 500]).depth, 500);
        assert_eq!(JsonShape::of(b"\"[[[[\""), JsonShape { values: 1, depth: 0 });
    }

    #[test]
    fn dense_arrays_cost_more_than_strings_of_the_same_size() {
        let dense = "0,".repeat(1000);
        let dense = format!("[{dense}0]");
        let string = format!("\"{}\"", "x".repeat(dense.len() - 2));
        let (dense_cost, string_cost) = (
            JsonShape::of(dense.as_bytes()).memory_estimate(dense.len()),
            JsonShape::of(string.as_bytes()).memory_estimate(string.len()),
        );
        assert!(dense_cost > 10 * string_cost / 2, "{dense_cost} vs {string_cost}");
    }

    #[test]
    fn a_charge_takes_what_is_free_and_returns_it_when_dropped() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.charge();
        assert!(first.grow(60));
        let mut second = budget.charge();
        assert!(!second.grow(50), "only 40 bytes are left");
        assert!(second.grow(40));
        assert_eq!(budget.available(), 0);
        assert!(first.grow_to(60), "already held");
        drop(first);
        assert_eq!(budget.available(), 60);
        assert!(second.grow_to(100));
        assert_eq!(second.held(), 100);
    }
}
