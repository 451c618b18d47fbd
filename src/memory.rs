//! Sizes that come from a user or a file (a KV cache size, a model length, a
//! config field) are checked before they are allocated: arithmetic is checked,
//! a size larger than the machine's memory is an error naming the size and
//! what fits, and the allocation itself is fallible.

use crate::error::{Error, Result};

/// The machine's memory in bytes (`MemTotal` of /proc/meminfo); `None` where
/// it cannot be read.
pub fn host_memory_bytes() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` for people: "1.50 GiB".
pub fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// How many items of `item_bytes` each fit in the machine's memory, when known.
pub fn items_that_fit(item_bytes: usize) -> Option<(usize, usize)> {
    host_memory_bytes().map(|m| (m, m / item_bytes.max(1)))
}

/// `count` items of `item_bytes` each, as bytes, unless that overflows or is
/// more than the machine has; the error says `what` needs how much and how
/// many items fit (`unit` names an item, `hint` says what to change).
pub fn checked_host_bytes(
    count: usize,
    item_bytes: usize,
    what: &str,
    unit: &str,
    hint: &str,
) -> Result<usize> {
    let bytes = count.checked_mul(item_bytes);
    let memory = host_memory_bytes();
    match (bytes, memory) {
        (Some(b), Some(m)) if b <= m => Ok(b),
        (Some(b), None) => Ok(b),
        (bytes, memory) => {
            let needs =
                bytes.map_or_else(|| format!("more than {} bytes", usize::MAX), human_bytes);
            let fits = memory.map_or(String::new(), |m| {
                format!(
                    ", more than the {} of memory this machine has (at most {} {unit} of {} fit)",
                    human_bytes(m),
                    m / item_bytes.max(1),
                    human_bytes(item_bytes)
                )
            });
            Err(Error::invalid(format!(
                "{what}: {count} {unit} need {needs}{fits}; {hint}"
            )))
        }
    }
}

/// A zeroed `Vec<f32>` of `len` values, or an error instead of an abort when
/// the memory is not there (the pages are only touched as they are used).
pub fn try_zeroed_f32(len: usize, what: &str) -> Result<Vec<f32>> {
    try_zeroed(len, what)
}

/// [`try_zeroed_f32`] for any type whose all-zero bytes are a value (f16, bf16).
pub fn try_zeroed<T: bytemuck::Zeroable>(len: usize, what: &str) -> Result<Vec<T>> {
    bytemuck::allocation::try_zeroed_vec(len).map_err(|()| {
        Error::invalid(format!(
            "{what}: cannot allocate {len} values ({})",
            len.checked_mul(std::mem::size_of::<T>())
                .map_or_else(|| "more than the address space".into(), human_bytes)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_beyond_the_machine_are_errors_naming_what_fits() {
        let e = checked_host_bytes(usize::MAX, 2, "the KV cache", "blocks", "lower it")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("18446744073709551615 blocks") && e.contains("lower it"),
            "{e}"
        );
        let e = checked_host_bytes(1 << 50, 1 << 10, "the KV cache", "blocks", "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("of memory this machine has"), "{e}");
        assert_eq!(checked_host_bytes(4, 8, "w", "u", "h").unwrap(), 32);
        assert!(try_zeroed_f32(usize::MAX / 2, "t").is_err());
        assert_eq!(try_zeroed_f32(3, "t").unwrap(), vec![0.0; 3]);
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
