//! Hostile-input JSON navigation for the Azure resource bodies: every value read carries its JSON
//! path, so a missing or mistyped field is an error that names it
//! (`connections[0].properties.virtualNetworkGateway1.id`). Unknown fields are never looked at.

use std::fmt;

use serde_json::Value;

/// Largest input file accepted (an `az ... show` body is a few KiB; a list a few hundred).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Longest string value used (names, ids, addresses); longer ones are refused.
pub const MAX_STRING: usize = 2048;
/// Most entries of an array that is read (prefix lists, policies, selectors).
pub const MAX_ARRAY: usize = 4096;

/// An error in the Azure input: the file, the JSON path and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub file: String,
    pub path: String,
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.file, self.path, self.message)
        }
    }
}

impl std::error::Error for JsonError {}

/// A JSON value with its path and the file it came from.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub v: &'a Value,
    pub path: String,
    pub file: &'a str,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Node<'a> {
    pub fn root(v: &'a Value, path: impl Into<String>, file: &'a str) -> Self {
        Node {
            v,
            path: path.into(),
            file,
        }
    }

    /// An error about this node.
    pub fn err(&self, message: impl Into<String>) -> JsonError {
        JsonError {
            file: self.file.to_string(),
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The member `key`, `None` when absent or null (Azure writes null for unset values).
    pub fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.v.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Node {
                v,
                path: self.child_path(key),
                file: self.file,
            }),
        }
    }

    /// The member `key`, or an error naming its path.
    pub fn req(&self, key: &str) -> Result<Node<'a>, JsonError> {
        self.get(key).ok_or_else(|| JsonError {
            file: self.file.to_string(),
            path: self.child_path(key),
            message: "missing (required)".into(),
        })
    }

    /// ARM resources nest their fields in `properties`; `az` prints them flattened. Either way
    /// this is the node that holds them.
    pub fn props(&self) -> Node<'a> {
        match self.get("properties") {
            Some(p) if p.v.is_object() => p,
            _ => self.clone(),
        }
    }

    pub fn is_object(&self) -> bool {
        self.v.is_object()
    }

    pub fn as_str(&self) -> Result<&'a str, JsonError> {
        match self.v {
            Value::String(s) if s.len() <= MAX_STRING => Ok(s.as_str()),
            Value::String(s) => Err(self.err(format!(
                "a string of {} bytes (at most {MAX_STRING} accepted)",
                s.len()
            ))),
            other => Err(self.err(format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn as_bool(&self) -> Result<bool, JsonError> {
        match self.v {
            Value::Bool(b) => Ok(*b),
            // Some tools print booleans as strings.
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
            other => Err(self.err(format!("expected true or false, found {}", kind(other)))),
        }
    }

    /// A non-negative integer (JSON number, or a string of digits as some tools print).
    pub fn as_u64(&self) -> Result<u64, JsonError> {
        let n = match self.v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) if s.len() <= 20 => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.ok_or_else(|| {
            self.err(format!(
                "expected a non-negative integer, found {}",
                match self.v {
                    Value::Number(n) => n.to_string(),
                    other => kind(other).to_string(),
                }
            ))
        })
    }

    pub fn as_array(&self) -> Result<Vec<Node<'a>>, JsonError> {
        match self.v {
            Value::Array(a) if a.len() <= MAX_ARRAY => Ok(a
                .iter()
                .enumerate()
                .map(|(i, v)| Node {
                    v,
                    path: format!("{}[{i}]", self.path),
                    file: self.file,
                })
                .collect()),
            Value::Array(a) => Err(self.err(format!(
                "{} entries (at most {MAX_ARRAY} accepted)",
                a.len()
            ))),
            other => Err(self.err(format!("expected an array, found {}", kind(other)))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, JsonError> {
        self.get(key).map(|n| n.as_str()).transpose()
    }

    pub fn req_str(&self, key: &str) -> Result<&'a str, JsonError> {
        self.req(key)?.as_str()
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, JsonError> {
        self.get(key).map(|n| n.as_bool()).transpose()
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, JsonError> {
        self.get(key).map(|n| n.as_u64()).transpose()
    }

    /// An optional array (absent or null: empty).
    pub fn opt_array(&self, key: &str) -> Result<Vec<Node<'a>>, JsonError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(n) => n.as_array(),
        }
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Vec<(&'a str, Node<'a>)>, JsonError> {
        self.opt_array(key)?
            .into_iter()
            .map(|n| n.as_str().map(|s| (s, n.clone())))
            .collect()
    }
}

/// Parses one input file's text (refusing oversized input before parsing).
pub fn parse_text(file: &str, text: &[u8]) -> Result<Value, JsonError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(JsonError {
            file: file.to_string(),
            path: String::new(),
            message: format!(
                "{} bytes: larger than the {} MiB an Azure resource body can need",
                text.len(),
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    // serde_json limits nesting to 128 levels, so hostile depth cannot exhaust the stack.
    serde_json::from_slice(text).map_err(|e| JsonError {
        file: file.to_string(),
        path: String::new(),
        message: format!("not JSON: {e}"),
    })
}

/// Reads one input file, at most [`MAX_FILE_BYTES`] (a larger file, a FIFO or `/dev/zero`
/// cannot make it read without end).
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, JsonError> {
    use std::io::Read;
    let name = path.display().to_string();
    let io = |e: std::io::Error| JsonError {
        file: name.clone(),
        path: String::new(),
        message: format!("cannot read: {e}"),
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(JsonError {
            file: name,
            path: String::new(),
            message: format!(
                "larger than {} MiB: not an Azure resource body",
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    Ok(buf)
}
