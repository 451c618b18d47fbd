//! A small JSON-schema validator for the keywords the guided-decoding tests'
//! schemas use (type, properties, required, additionalProperties, items,
//! minItems, maxItems, minLength, maxLength, enum), so that outputs are checked
//! by something other than the library that generated them.

use serde_json::Value;

/// `Err` names the first violation and where it is.
pub fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, value, "$")
}

fn check(schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let fail = |what: String| Err(format!("{at}: {what}"));
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            return fail(format!("{value} is not one of {options:?}"));
        }
    }
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            // Any integral number (serde_json reads huge integers as floats).
            "integer" => value.as_f64().is_some_and(|f| f.fract() == 0.0),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            other => return fail(format!("the validator does not know type {other}")),
        };
        if !ok {
            return fail(format!("{value} is not of type {kind}"));
        }
    }
    let count = |key: &str| schema.get(key).and_then(Value::as_u64).map(|n| n as usize);
    if let Some(s) = value.as_str() {
        let len = s.chars().count();
        if count("maxLength").is_some_and(|m| len > m)
            || count("minLength").is_some_and(|m| len < m)
        {
            return fail(format!("string length {len} out of bounds"));
        }
    }
    if let Some(items) = value.as_array() {
        if count("maxItems").is_some_and(|m| items.len() > m)
            || count("minItems").is_some_and(|m| items.len() < m)
        {
            return fail(format!("{} items out of bounds", items.len()));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return fail(format!("required property {name:?} is missing"));
            }
        }
        for (name, v) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(s) => check(s, v, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return fail(format!("property {name:?} is not allowed"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Parses JSON text whose numbers serde_json may not hold (valid JSON, such as
/// `1e999999` or 400 digits from a model at temperature 1): digit runs are cut
/// to 18 digits and exponents of more than 3 digits read as 0. The validator
/// only asks whether a number is integral, which neither changes (a huge
/// negative exponent aside, which reads as an integer).
pub fn parse_lenient(text: &str) -> serde_json::Result<Value> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_string, mut escaped) = (false, false);
    while let Some(c) = chars.next() {
        out.push(c);
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '0'..='9' => {
                // Digits past the 18th change no integrality (and would overflow f64).
                let mut run = 1;
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    chars.next();
                    run += 1;
                    if run <= 18 {
                        out.push(d);
                    }
                }
            }
            'e' | 'E' => {
                let mut exponent = String::new();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_ascii_digit() || **d == '+' || **d == '-')
                {
                    exponent.push(d);
                    chars.next();
                }
                let digits = exponent.trim_start_matches(['+', '-']);
                if digits.len() > 3 {
                    out.push('0');
                } else {
                    out.push_str(&exponent);
                }
            }
            _ => {}
        }
    }
    serde_json::from_str(&out)
}
