//! Payload buffers recycled between the relay, which reads socket bytes into them, and the tap
//! writer thread, which renders them.
//!
//! A bulk read is handed to the tap as is (no copy out of the read buffer), and a buffer the
//! writer is done with comes back here instead of going to the allocator: with 64 KiB chunks
//! at gigabits per second, malloc trims and re-faults fresh zeroed pages otherwise, which
//! measured as 12% of the dumping proxy's CPU (page faults under the copy).

use std::sync::{Arc, Mutex};

/// Size of one read buffer on the tapped path.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Reads at least this big hand their buffer over; smaller ones are copied out at their size
/// so a queued 78-byte request does not pin 64 KiB (the queue holds up to --dump-queue chunks).
pub(crate) const HAND_OVER: usize = CHUNK / 4;

/// Buffers kept for reuse (4 MiB): enough for the chunks in flight on a busy proxy, small
/// next to the queue's own bound.
const KEEP: usize = 64;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer of CHUNK bytes to read into, recycled when one is free.
pub(crate) fn take() -> Vec<u8> {
    let reused = POOL.lock().ok().and_then(|mut p| p.pop());
    match reused {
        Some(mut v) => {
            // Only the tail past the last read's length is filled.
            v.resize(CHUNK, 0);
            v
        }
        None => vec![0u8; CHUNK],
    }
}

/// Give a chunk back once nobody else holds it (the last holder recycles it).
pub(crate) fn recycle(bytes: Arc<Vec<u8>>) {
    if let Ok(v) = Arc::try_unwrap(bytes) {
        give(v);
    }
}

fn give(v: Vec<u8>) {
    if v.capacity() != CHUNK {
        return;
    }
    if let Ok(mut p) = POOL.lock() {
        if p.len() < KEEP {
            p.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_chunk_comes_back_full_length_and_others_are_left_alone() {
        let mut v = take();
        assert_eq!(v.len(), CHUNK);
        v.truncate(100);
        let a = Arc::new(v);
        let held = a.clone();
        // Someone still holds it: not recycled.
        recycle(a);
        let ptr = held.as_ptr();
        recycle(held);
        // Now it is in the pool (the pool is process-wide; another test may take it first,
        // so look for it among a few takes).
        let got: Vec<Vec<u8>> = (0..KEEP).map(|_| take()).collect();
        assert!(got.iter().all(|v| v.len() == CHUNK));
        assert!(got.iter().any(|v| v.as_ptr() == ptr));
        // A right-sized small copy never enters the pool (no other test pools CHUNK buffers).
        let before = POOL.lock().unwrap().len();
        recycle(Arc::new(vec![1u8; 10]));
        assert_eq!(
            POOL.lock().unwrap().len(),
            before,
            "a small copy was pooled"
        );
        for v in got {
            give(v);
        }
    }
}
