//! NumPy array sizes, so a user can paste the shape and dtype of the array that failed.
//!
//! `np.zeros(shape, dtype)` asks for `prod(shape) * itemsize` bytes in one private anonymous
//! mapping (through calloc), which is exactly one overcommit check.

/// Why a shape or dtype did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    #[error("unknown dtype `{0}`: expected a NumPy name or code such as float64, f8, float32, int64, i4, uint8, u1, bool, complex128, c16, S10 or U10")]
    UnknownDtype(String),
    #[error("shape `{0}` is not valid: expected dimensions separated by x or commas, such as 210000x210000 or (210000, 210000)")]
    BadShape(String),
    #[error("shape `{shape}` with dtype `{dtype}` is larger than 2^64 - 1 bytes")]
    TooLarge { shape: String, dtype: String },
}

/// Size in bytes of one element of the NumPy dtype `name` (names, one-letter codes, and
/// typestrings with an optional byte-order prefix: `float64`, `f8`, `<f8`, `d`, `U10`).
pub fn itemsize(name: &str) -> Result<u64, ArrayError> {
    let unknown = || ArrayError::UnknownDtype(name.to_string());
    let trimmed = name.trim();
    let bare = trimmed
        .strip_prefix("np.")
        .or_else(|| trimmed.strip_prefix("numpy."))
        .unwrap_or(trimmed);
    let bare = bare.strip_prefix(['<', '>', '=', '|']).unwrap_or(bare);
    let size = match bare {
        "bool" | "bool_" | "?" | "b1" => 1,
        "int8" | "i1" | "b" | "byte" => 1,
        "uint8" | "u1" | "B" | "ubyte" => 1,
        "int16" | "i2" | "h" | "short" => 2,
        "uint16" | "u2" | "H" | "ushort" => 2,
        "int32" | "i4" | "i" | "intc" => 4,
        "uint32" | "u4" | "I" | "uintc" => 4,
        "int64" | "i8" | "l" | "q" | "long" | "longlong" | "int" | "int_" | "intp" | "p" => 8,
        "uint64" | "u8" | "L" | "Q" | "ulong" | "ulonglong" | "uint" | "uintp" | "P" => 8,
        "float16" | "f2" | "e" | "half" => 2,
        "float32" | "f4" | "f" | "single" => 4,
        "float64" | "f8" | "d" | "double" | "float" | "float_" => 8,
        "float128" | "f16" | "g" | "longdouble" => 16,
        "complex64" | "c8" | "F" | "csingle" => 8,
        "complex128" | "c16" | "D" | "cdouble" | "complex" | "complex_" => 16,
        "complex256" | "c32" | "G" | "clongdouble" => 32,
        "datetime64" | "M8" | "M" | "timedelta64" | "m8" | "m" => 8,
        other => return sized_string(other).ok_or_else(unknown),
    };
    Ok(size)
}

/// Flexible types with a length: `S10`/`a10` (bytes), `U10` (UCS-4 text), `V16` (void).
fn sized_string(code: &str) -> Option<u64> {
    let (kind, count) = code.split_at(code.char_indices().nth(1)?.0);
    let count: u64 = count.parse().ok().filter(|&n| n > 0)?;
    match kind {
        "S" | "a" | "V" => Some(count),
        "U" => count.checked_mul(4),
        _ => None,
    }
}

/// Parses a shape such as `210000x210000`, `210000,210000` or `(210000, 210000)`.
pub fn parse_shape(text: &str) -> Result<Vec<u64>, ArrayError> {
    let bad = || ArrayError::BadShape(text.to_string());
    let inner = text.trim().trim_start_matches('(').trim_end_matches(')');
    let dims: Vec<u64> = inner
        .split(['x', 'X', ',', '×', '*'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| part.replace('_', "").parse::<u64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if dims.is_empty() {
        return Err(bad());
    }
    Ok(dims)
}

/// Bytes NumPy asks for to hold an array of `shape` and `dtype`.
pub fn array_bytes(shape: &str, dtype: &str) -> Result<u64, ArrayError> {
    let dims = parse_shape(shape)?;
    let item = itemsize(dtype)?;
    dims.iter()
        .try_fold(item, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| ArrayError::TooLarge {
            shape: shape.to_string(),
            dtype: dtype.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_array_is_352_8_gb() {
        assert_eq!(array_bytes("210000x210000", "float64"), Ok(352_800_000_000));
        assert_eq!(array_bytes("(210000, 210000)", "f8"), Ok(352_800_000_000));
        assert_eq!(array_bytes("210000,210000", "<f8"), Ok(352_800_000_000));
    }

    #[test]
    fn names_and_codes_agree() {
        for (a, b) in [
            ("float32", "f4"),
            ("int64", "i8"),
            ("uint8", "u1"),
            ("complex128", "c16"),
            ("complex64", "F"),
            ("float64", "d"),
            ("bool", "?"),
            ("int16", "h"),
        ] {
            assert_eq!(itemsize(a), itemsize(b), "{a} vs {b}");
        }
        assert_eq!(itemsize("complex128"), Ok(16));
        assert_eq!(itemsize("u1"), Ok(1));
        assert_eq!(itemsize("np.float16"), Ok(2));
        assert_eq!(itemsize("U10"), Ok(40));
        assert_eq!(itemsize("S7"), Ok(7));
    }

    #[test]
    fn rejects_unknown_dtypes_and_bad_shapes() {
        assert!(matches!(
            itemsize("float65"),
            Err(ArrayError::UnknownDtype(_))
        ));
        assert!(matches!(itemsize("S0"), Err(ArrayError::UnknownDtype(_))));
        assert!(matches!(itemsize(""), Err(ArrayError::UnknownDtype(_))));
        assert!(matches!(
            parse_shape("10xfoo"),
            Err(ArrayError::BadShape(_))
        ));
        assert!(matches!(parse_shape("()"), Err(ArrayError::BadShape(_))));
        assert!(matches!(parse_shape("-3x4"), Err(ArrayError::BadShape(_))));
        assert!(matches!(
            array_bytes("4294967296x4294967296", "f8"),
            Err(ArrayError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_zero_dimension_means_zero_bytes() {
        assert_eq!(array_bytes("0x10", "f8"), Ok(0));
    }
}
