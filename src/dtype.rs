//! NumPy array sizes, so a user can paste the shape and dtype of the array that failed.
//!
//! `np.zeros(shape, dtype)` asks for `prod(shape) * itemsize` bytes in one allocation (calloc),
//! which is one overcommit check. The dtypes are the strings NumPy's `np.dtype()` accepts:
//! names (`float64`, `object`, `str`), one-letter codes (`d`, `O`, `U`), typestrings with a
//! byte order (`<f8`, `|S10`), datetimes with units (`datetime64[ns]`, `M8[10s]`), flexible
//! types with or without a length (`U10`, `S`), sub-arrays (`(2,3)f8`, `3i4`) and structured
//! types (`f8,i4`). Sizes are those of a 64-bit Linux NumPy (checked against NumPy 1.24).

/// Why a shape or dtype did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    #[error("unknown dtype `{0}`: expected a NumPy dtype such as float64, f8, float32, int64, i4, uint8, u1, bool, complex128, c16, object (O), datetime64[ns] (M8[ns]), timedelta64, U10, S10, str or bytes")]
    UnknownDtype(String),
    #[error("dtype `{dtype}`: {reason}")]
    BadDtype { dtype: String, reason: String },
    #[error("shape `{shape}` is not valid: {reason}; expected whole numbers separated by x or commas, such as 210000x210000 or (210000, 210000)")]
    BadShape { shape: String, reason: String },
    #[error("shape `{shape}` with dtype `{dtype}` is larger than 2^64 - 1 bytes")]
    TooLarge { shape: String, dtype: String },
}

/// Size of a C pointer (the `object` dtype holds one per element).
const POINTER: u64 = std::mem::size_of::<usize>() as u64;

/// Bytes of one element of the NumPy dtype `text`.
pub fn itemsize(text: &str) -> Result<u64, ArrayError> {
    let trimmed = text.trim();
    let bare = trimmed
        .strip_prefix("np.")
        .or_else(|| trimmed.strip_prefix("numpy."))
        .unwrap_or(trimmed);
    if bare.is_empty() {
        return Err(ArrayError::UnknownDtype(text.to_string()));
    }
    // Structured: comma-separated fields, packed (np.dtype("f8,i4") is 12 bytes); one trailing
    // comma is allowed, as NumPy allows it.
    let fields = split_top_level(bare.strip_suffix(',').unwrap_or(bare));
    let mut total: u64 = 0;
    for field in &fields {
        let size = field_size(text, field.trim())?;
        total = total
            .checked_add(size)
            .ok_or_else(|| ArrayError::BadDtype {
                dtype: text.to_string(),
                reason: "the element is larger than 2^64 - 1 bytes".into(),
            })?;
    }
    Ok(total)
}

/// Splits at commas outside parentheses and brackets.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One field: an optional sub-array prefix (`3`, `(2,3)`) and a base type.
fn field_size(dtype: &str, field: &str) -> Result<u64, ArrayError> {
    let bad = |reason: &str| ArrayError::BadDtype {
        dtype: dtype.to_string(),
        reason: reason.to_string(),
    };
    if field.is_empty() {
        return Err(bad("an empty field between commas"));
    }
    let (count, base) = if let Some(rest) = field.strip_prefix('(') {
        let (dims, base) = rest
            .split_once(')')
            .ok_or_else(|| bad("a sub-array shape without its closing parenthesis"))?;
        let inner = dims.trim();
        let inner = inner.strip_suffix(',').unwrap_or(inner);
        if !dims.contains(',') && !inner.is_empty() {
            // NumPy refuses `(2)f8`: a one-dimensional sub-array is `(2,)f8` or `2f8`.
            return Err(bad("a one-dimensional sub-array is written (2,)f8 or 2f8"));
        }
        let mut count: u64 = 1;
        if !inner.is_empty() {
            for dim in inner.split(',') {
                let dim: u64 = dim
                    .trim()
                    .parse()
                    .map_err(|_| bad("sub-array dimensions are whole numbers"))?;
                count = count.saturating_mul(dim);
            }
        }
        (count, base.trim())
    } else {
        let digits = field.len() - field.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        match field.split_at(digits) {
            ("", base) => (1, base),
            (n, base) => (n.parse::<u64>().unwrap_or(u64::MAX), base),
        }
    };
    let size = base_size(base).ok_or_else(|| match base {
        "" => bad("a sub-array needs an element type, e.g. (2,3)f8"),
        _ => ArrayError::UnknownDtype(dtype.to_string()),
    })?;
    count
        .checked_mul(size)
        .ok_or_else(|| bad("the element is larger than 2^64 - 1 bytes"))
}

/// A base type: a name, or a code or typestring with an optional byte-order character.
fn base_size(base: &str) -> Option<u64> {
    if let Some(size) = named_size(base) {
        return Some(size);
    }
    let code = base.strip_prefix(['<', '>', '=', '|']).unwrap_or(base);
    let split = code.char_indices().nth(1).map_or(code.len(), |(i, _)| i);
    let (kind, rest) = code.split_at(split);
    let (digits, unit) = match rest.find('[') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let length: Option<u64> = if digits.is_empty() {
        None
    } else {
        Some(digits.parse().ok()?)
    };
    if !unit.is_empty() {
        // Only datetimes take a unit: M8[ns], m8[10s].
        return (matches!(kind, "M" | "m")
            && matches!(length, None | Some(8))
            && datetime_unit(unit))
        .then_some(8);
    }
    match (kind, length) {
        // Flexible types: a missing or zero length is one character (NumPy sizes `U` as U1),
        // except void, which stays empty.
        ("U", n) => Some(4 * n.unwrap_or(1).max(1)),
        ("S" | "a", n) => Some(n.unwrap_or(1).max(1)),
        ("V", n) => Some(n.unwrap_or(0)),
        (kind, None) => code_size(kind),
        (kind, Some(n)) => {
            let allowed: &[u64] = match kind {
                "b" => &[1],
                "i" | "u" => &[1, 2, 4, 8],
                "f" => &[2, 4, 8, 16],
                "c" => &[8, 16, 32],
                "M" | "m" | "O" => &[8],
                _ => &[],
            };
            allowed.contains(&n).then_some(n)
        }
    }
}

/// `[unit]` or `[Nunit]` of a datetime64/timedelta64.
fn datetime_unit(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    let unit = inner.trim_start_matches(|c: char| c.is_ascii_digit());
    matches!(
        unit,
        "Y" | "M"
            | "W"
            | "D"
            | "h"
            | "m"
            | "s"
            | "ms"
            | "us"
            | "μs"
            | "ns"
            | "ps"
            | "fs"
            | "as"
            | "generic"
    )
}

/// The one-character type codes.
fn code_size(code: &str) -> Option<u64> {
    Some(match code {
        "?" | "b" | "B" => 1,
        "h" | "H" | "e" => 2,
        "i" | "I" | "f" => 4,
        "l" | "L" | "q" | "Q" | "p" | "P" | "d" | "F" | "M" | "m" => 8,
        "O" => POINTER,
        "g" | "D" => 16,
        "G" => 32,
        _ => return None,
    })
}

/// Type names, including the aliases NumPy 1.x still accepts.
fn named_size(name: &str) -> Option<u64> {
    Some(match name {
        "bool" | "bool_" | "bool8" => 1,
        "int8" | "byte" | "uint8" | "ubyte" => 1,
        "int16" | "short" | "uint16" | "ushort" | "float16" | "half" => 2,
        "int32" | "intc" | "uint32" | "uintc" | "float32" | "single" => 4,
        "int64" | "long" | "longlong" | "int" | "int_" | "intp" | "int0" => 8,
        "uint64" | "ulong" | "ulonglong" | "uint" | "uintp" | "uint0" => 8,
        "float64" | "double" | "float" | "float_" => 8,
        "complex64" | "csingle" => 8,
        "datetime64" | "timedelta64" => 8,
        "float128" | "longdouble" | "complex128" | "cdouble" | "complex" | "complex_" => 16,
        "complex256" | "clongdouble" => 32,
        "object" | "object_" | "object0" => POINTER,
        "str" | "str_" | "str0" | "unicode" | "unicode_" => 4,
        "bytes" | "bytes_" | "bytes0" | "string_" => 1,
        "void" | "void0" => 0,
        other => {
            // datetime64[ns], timedelta64[10s]
            let (name, unit) = other.split_at(other.find('[')?);
            return (matches!(name, "datetime64" | "timedelta64") && datetime_unit(unit))
                .then_some(8);
        }
    })
}

/// Parses a shape such as `210000x210000`, `210000,210000`, `(210000, 210000)` or `(10,)`.
pub fn parse_shape(text: &str) -> Result<Vec<u64>, ArrayError> {
    let bad = |reason: String| ArrayError::BadShape {
        shape: text.to_string(),
        reason,
    };
    let trimmed = text.trim();
    let inner = match (trimmed.strip_prefix('('), trimmed.ends_with(')')) {
        (Some(rest), true) => &rest[..rest.len() - 1],
        (None, false) => trimmed,
        _ => return Err(bad("unbalanced parentheses".into())),
    };
    // Python writes a one-dimensional tuple with a trailing comma: (10,).
    let inner = inner.trim();
    let inner = inner.strip_suffix(',').unwrap_or(inner);
    if inner.trim().is_empty() {
        return Err(bad("it has no dimensions".into()));
    }
    inner
        .split(['x', 'X', ',', '×', '*'])
        .enumerate()
        .map(|(i, part)| {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(format!("dimension {} is empty", i + 1)));
            }
            if part.starts_with('-') {
                return Err(bad(format!("dimension `{part}` is negative")));
            }
            part.replace('_', "")
                .parse::<u64>()
                .map_err(|_| bad(format!("dimension `{part}` is not a whole number")))
        })
        .collect()
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
        assert_eq!(array_bytes("(210000,)", "f8"), Ok(1_680_000));
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
            ("object", "O"),
            ("datetime64[ns]", "M8[ns]"),
            ("timedelta64", "m8"),
            ("str", "U"),
            ("bytes", "S"),
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
    fn flexible_datetime_object_subarray_and_structured_types_are_sized_like_numpy() {
        for (dtype, size) in [
            ("U", 4),
            ("S", 1),
            ("U0", 4),
            ("S0", 1),
            ("a5", 5),
            ("V", 0),
            ("V16", 16),
            ("object", 8),
            ("O8", 8),
            ("datetime64[ns]", 8),
            ("<M8[ns]", 8),
            ("M8[10s]", 8),
            ("m8[D]", 8),
            ("M8[μs]", 8),
            ("(2,3)f8", 48),
            ("(2,)U3", 24),
            ("3i4", 12),
            ("()f8", 8),
            ("f8,i4", 12),
            ("f8, i4", 12),
            ("i4,(2,)f8", 20),
            ("f8,", 8),
        ] {
            assert_eq!(itemsize(dtype), Ok(size), "{dtype}");
        }
    }

    #[test]
    fn rejects_what_numpy_rejects() {
        for dtype in [
            "float65",
            "Float64",
            "<float64",
            "M8[s",
            "M8[]",
            "datetime64[]",
            "f8[ns]",
            "(2)f8",
            "i16",
            "c4",
            "Sx",
            "",
            "f8,,i4",
        ] {
            assert!(itemsize(dtype).is_err(), "{dtype} should be refused");
        }
    }

    #[test]
    fn bad_shapes_say_what_is_wrong() {
        let reason = |shape: &str| match parse_shape(shape) {
            Err(ArrayError::BadShape { reason, .. }) => reason,
            other => panic!("{shape}: {other:?}"),
        };
        assert_eq!(reason("10x"), "dimension 2 is empty");
        assert_eq!(reason("x10"), "dimension 1 is empty");
        assert_eq!(reason("10xx10"), "dimension 2 is empty");
        assert_eq!(reason("10,,10"), "dimension 2 is empty");
        assert_eq!(reason("()"), "it has no dimensions");
        assert_eq!(reason("(10"), "unbalanced parentheses");
        assert_eq!(reason("-3x4"), "dimension `-3` is negative");
        assert_eq!(reason("10xfoo"), "dimension `foo` is not a whole number");
        assert_eq!(reason("1.5x2"), "dimension `1.5` is not a whole number");
        assert_eq!(parse_shape("(10,)"), Ok(vec![10]));
        assert_eq!(parse_shape("10"), Ok(vec![10]));
        assert!(matches!(
            array_bytes("4294967296x4294967296", "f8"),
            Err(ArrayError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_zero_dimension_means_zero_bytes() {
        assert_eq!(array_bytes("0x10", "f8"), Ok(0));
    }

    proptest::proptest! {
        #[test]
        fn any_dtype_or_shape_text_parses_or_errors_without_panic(text in "\\PC{0,16}") {
            let _ = itemsize(&text);
            let _ = parse_shape(&text);
        }
    }
}
