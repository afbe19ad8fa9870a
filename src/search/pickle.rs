//! A safe reader for PaddleClas's `id_map.pkl`: a pickled `dict` of int64 id
//! → the gallery list line.
//!
//! Python's `pickle.load` runs whatever callables the file names, so loading
//! an untrusted pickle is running untrusted code. This reader is a small
//! stack machine over the data opcodes only. The one construct it
//! interprets beyond plain data is the numpy int64 scalar that
//! `build_gallery.py` writes as dict keys
//! (`numpy._core.multiarray.scalar(numpy.dtype('i8'), 8 bytes)`); any other
//! global is refused by name, and nothing is ever called.

use std::collections::BTreeMap;

/// A decoding error with the byte offset it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError(pub String);

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Mark,
    NumpyScalar,
    NumpyDtype,
    Dtype { code: String, little_endian: bool },
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Mark => "mark",
            Value::NumpyScalar | Value::NumpyDtype => "numpy callable",
            Value::Dtype { .. } => "numpy dtype",
        }
    }
}

/// Reads a pickled `dict[int, str]`, as `id_map.pkl` holds.
pub fn read_id_map(data: &[u8]) -> Result<BTreeMap<i64, String>, PickleError> {
    let root = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        memo: Vec::new(),
    }
    .run()?;
    match root {
        Value::Dict(items) => {
            let mut out = BTreeMap::new();
            for (n, (k, v)) in items.into_iter().enumerate() {
                match (k, v) {
                    (Value::Int(k), Value::Str(v)) => {
                        out.insert(k, v);
                    }
                    (k, v) => {
                        return Err(PickleError(format!(
                            "expected a dict of int -> str, but entry {n} maps {} to {}",
                            k.kind(),
                            v.kind()
                        )))
                    }
                }
            }
            Ok(out)
        }
        other => Err(PickleError(format!(
            "expected a dict of int -> str, found a {}",
            other.kind()
        ))),
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: Vec<Option<Value>>,
}

impl Machine<'_> {
    fn err<T>(&self, what: impl std::fmt::Display) -> Result<T, PickleError> {
        Err(PickleError(format!("{what} (at byte {})", self.pos)))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        if n > self.data.len() - self.pos {
            return self.err("truncated pickle");
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: usize) -> Result<usize, PickleError> {
        let b = self.take(n)?;
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate() {
            v |= (*byte as u64) << (8 * i);
        }
        usize::try_from(v).or_else(|_| self.err("length too large"))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| PickleError("truncated pickle: unterminated line".into()))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?.to_vec();
        String::from_utf8(b)
            .map(Value::Str)
            .or_else(|_| self.err("string is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow: malformed pickle"),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let Some(at) = self.stack.iter().rposition(|v| *v == Value::Mark) else {
            return self.err("no MARK on the stack");
        };
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn put(&mut self, idx: usize) -> Result<(), PickleError> {
        let top = self
            .stack
            .last()
            .cloned()
            .ok_or_else(|| PickleError("memoize with an empty stack".into()))?;
        if idx > self.data.len() {
            return self.err("memo index out of range");
        }
        if self.memo.len() <= idx {
            self.memo.resize(idx + 1, None);
        }
        self.memo[idx] = Some(top);
        Ok(())
    }

    fn get(&mut self, idx: usize) -> Result<(), PickleError> {
        match self.memo.get(idx).cloned().flatten() {
            Some(v) => {
                self.stack.push(v);
                Ok(())
            }
            None => self.err(format!("memo {idx} is not defined")),
        }
    }

    fn global(&self, module: &str, name: &str) -> Result<Value, PickleError> {
        match (module, name) {
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Ok(Value::NumpyScalar),
            ("numpy", "dtype") => Ok(Value::NumpyDtype),
            _ => self.err(format!("refusing to load {module}.{name}: only numpy int64 scalars may appear in an id map")),
        }
    }

    fn dict_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return self.err("odd number of items for a dict");
        }
        let Some(Value::Dict(d)) = self.stack.last_mut() else {
            return self.err("SETITEMS without a dict");
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            d.push((k, v));
        }
        Ok(())
    }

    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else {
            return self.err("REDUCE arguments are not a tuple");
        };
        match (callable, args.as_slice()) {
            (Value::NumpyDtype, [Value::Str(code), ..]) => Ok(Value::Dtype {
                code: code.clone(),
                little_endian: true,
            }),
            (
                Value::NumpyScalar,
                [Value::Dtype {
                    code,
                    little_endian,
                }, Value::Bytes(b)],
            ) => {
                let code = code.trim_start_matches(['<', '=', '|']);
                let v = match (code, b.len()) {
                    ("i8", 8) => i64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
                    ("i4", 4) => i32::from_le_bytes(b[..4].try_into().unwrap_or_default()) as i64,
                    ("u4", 4) => u32::from_le_bytes(b[..4].try_into().unwrap_or_default()) as i64,
                    _ => {
                        return self.err(format!(
                            "numpy scalar of dtype {code} with {} bytes is not an integer id",
                            b.len()
                        ))
                    }
                };
                if !little_endian {
                    return self.err("big-endian numpy scalars are not supported");
                }
                Ok(Value::Int(v))
            }
            (c, _) => self.err(format!("cannot apply {} to these arguments", c.kind())),
        }
    }

    fn run(mut self) -> Result<Value, PickleError> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let proto = self.take(1)?[0];
                    if proto > 5 {
                        return self.err(format!("unsupported pickle protocol {proto}"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b'(' => self.stack.push(Value::Mark),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Vec::new()));
                    self.dict_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.dict_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.dict_items(items)?;
                }
                0x94 => {
                    let n = self.memo.len();
                    self.put(n)?;
                }
                b'q' => {
                    let i = self.uint(1)?;
                    self.put(i)?;
                }
                b'r' => {
                    let i = self.uint(4)?;
                    self.put(i)?;
                }
                b'p' => {
                    let i = self
                        .line()?
                        .trim()
                        .parse()
                        .or_else(|_| self.err("bad PUT index"))?;
                    self.put(i)?;
                }
                b'h' => {
                    let i = self.uint(1)?;
                    self.get(i)?;
                }
                b'j' => {
                    let i = self.uint(4)?;
                    self.get(i)?;
                }
                b'g' => {
                    let i = self
                        .line()?
                        .trim()
                        .parse()
                        .or_else(|_| self.err("bad GET index"))?;
                    self.get(i)?;
                }
                b'J' => {
                    let b = self.take(4)?;
                    let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.uint(1)?;
                    if n > 8 {
                        return self.err("integer id wider than 64 bits");
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, byte) in b.iter().enumerate() {
                        v |= (*byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n); // two's complement sign
                    }
                    self.stack.push(Value::Int(v));
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l.trim() {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        t => Value::Int(t.parse().or_else(|_| self.err(format!("bad INT {t:?}")))?),
                    };
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.uint(1)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.uint(4)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.uint(8)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.uint(1)?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'B' => {
                    let n = self.uint(4)?;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(b));
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err("stack underflow: malformed pickle");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return self.err("STACK_GLOBAL needs two strings");
                    };
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(&module, &name)?;
                    self.stack.push(g);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // dtype.__setstate__((version, byteorder, ...)): only the byte order matters.
                    let state = self.pop()?;
                    let Some(Value::Dtype { little_endian, .. }) = self.stack.last_mut() else {
                        return self.err("BUILD on something other than a numpy dtype");
                    };
                    if let Value::Tuple(t) = state {
                        if let Some(Value::Str(order)) = t.get(1) {
                            *little_endian = order != ">";
                        }
                    }
                }
                other => return self.err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paddleclas_id_map_with_numpy_keys() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/reference/paddleclas_index/id_map.pkl"
        );
        let map = read_id_map(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(map.len(), 25);
        assert_eq!(map[&0], "Blender_Suzanne1.jpg\tBlender_Suzanne1");
    }

    #[test]
    fn reads_plain_protocol_2_and_0_dicts() {
        // pickle.dumps({0: 'a.jpg\ta b', 300: 'x'}, protocol=2)
        let p2 =
            b"\x80\x02}q\x00(K\x00X\x09\x00\x00\x00a.jpg\ta bq\x01M,\x01X\x01\x00\x00\x00xq\x02u.";
        let m = read_id_map(p2).unwrap();
        assert_eq!((m[&0].as_str(), m[&300].as_str()), ("a.jpg\ta b", "x"));
        // pickle.dumps({7: 'y'}, protocol=0)
        let p0 = b"(dp0\nI7\nVy\np1\ns.";
        // protocol 0's UNICODE opcode 'V' is not needed by PaddleClas and is refused clearly.
        assert!(read_id_map(p0)
            .unwrap_err()
            .0
            .contains("unsupported pickle opcode 0x56"));
    }

    #[test]
    fn refuses_code_other_shapes_and_truncation() {
        // pickle.dumps of an object whose __reduce__ is os.system('echo pwned')
        let evil = b"\x80\x04\x95\x25\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\x0aecho pwned\x94\x85\x94R\x94.";
        let e = read_id_map(evil).unwrap_err().0;
        assert!(e.contains("refusing to load posix.system"), "{e}");
        // {'a': 'b'}
        let e = read_id_map(b"\x80\x02}q\x00X\x01\x00\x00\x00aX\x01\x00\x00\x00bs.")
            .unwrap_err()
            .0;
        assert!(e.contains("maps str to str"), "{e}");
        // [1, 2]
        let e = read_id_map(b"\x80\x02]q\x00(K\x01K\x02e.").unwrap_err().0;
        assert!(e.contains("unsupported pickle opcode 0x5d"), "{e}");
        let e = read_id_map(b"\x80\x02}q\x00(K\x00X\x09\x00\x00\x00a.j")
            .unwrap_err()
            .0;
        assert!(e.contains("truncated"), "{e}");
        let e = read_id_map(b"\x80\x02K\x05.").unwrap_err().0;
        assert!(e.contains("found a int"), "{e}");
    }
}
