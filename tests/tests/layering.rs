//! The layering of `connection-host/src`: a module imports only modules in lower layers.
//!
//! The layer table is the diagram in the crate docs (`connection-host/src/lib.rs`, section
//! "Layers"), so the documentation and the check cannot drift apart. Every reference to another
//! module — `use crate::x`, `use crate::{a, b::c}`, a `crate::x::f()` path, `super::`/`self::`
//! paths and paths through a declared child module — is resolved to a module path, mapped to the
//! table's longest matching entry (a unit), and compared with the table. A reference to a unit in
//! a higher layer fails, naming the file, the line and the rule; so does an import cycle among the
//! units of one layer.
//!
//! Edges the code has today and the target layering forbids are listed, each with its reason, in
//! `connection-host/layering-allow.txt`. The list only shrinks: an allow-listed edge that no longer
//! exists fails too, asking for its removal.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path inside the crate, as segments (`["cluster", "liveness"]`); empty is the root.
type ModPath = Vec<String>;

#[test]
fn connection_host_imports_point_down() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../connection-host");
    let src = crate_dir.join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read connection-host/src/lib.rs");
    let table =
        Table::from_crate_docs(&lib).unwrap_or_else(|e| panic!("connection-host/src/lib.rs: {e}"));
    let allow_path = crate_dir.join("layering-allow.txt");
    let allow_text =
        std::fs::read_to_string(&allow_path).expect("read connection-host/layering-allow.txt");
    let allow = Allow::parse(&allow_text)
        .unwrap_or_else(|e| panic!("connection-host/layering-allow.txt: {e}"));

    let mut files = Vec::new();
    collect_rs(&src, &mut files);
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        // main.rs is the binary's own crate: it uses the library from outside.
        .filter(|p| **p != src.join("main.rs"))
        .map(|p| {
            let rel = p
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(p).unwrap())
        })
        .collect();

    let problems = check(&sources, &table, &allow);
    assert!(
        problems.is_empty(),
        "connection-host layering (table: connection-host/src/lib.rs, allow-list: \
         connection-host/layering-allow.txt):\n{}",
        problems.join("\n")
    );
}

/// Every `.rs` file under `dir`.
fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source directory") {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer of each unit (a module, or a submodule placed apart from its parent).
struct Table {
    units: BTreeMap<ModPath, u32>,
}

impl Table {
    /// Reads the rows of the first ```` ```text ```` block after the `# Layers` heading of the crate
    /// docs: `N  unit unit … | description`, where a unit is a module path such as `cluster::liveness`;
    /// a row without `N` continues the layer above.
    fn from_crate_docs(lib: &str) -> Result<Table, String> {
        let docs: Vec<&str> = lib
            .lines()
            .map_while(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        let heading = docs
            .iter()
            .position(|l| l.trim() == "# Layers")
            .ok_or("no `# Layers` section in the crate docs")?;
        let open = docs[heading..]
            .iter()
            .position(|l| l.trim() == "```text")
            .ok_or("no ```text block in the `# Layers` section")?
            + heading;
        let mut units = BTreeMap::new();
        let mut layer = None;
        for row in docs[open + 1..].iter().take_while(|l| l.trim() != "```") {
            let Some((left, _description)) = row.split_once('|') else {
                continue;
            };
            let mut words = left.split_whitespace().peekable();
            // A row starting with a number opens that layer; one without continues the layer above
            // (the header row comes before any layer and is skipped).
            if let Some(n) = words.peek().and_then(|w| w.parse::<u32>().ok()) {
                layer = Some(n);
                words.next();
            }
            let Some(layer) = layer else { continue };
            for unit in words {
                let path: ModPath = unit.split("::").map(str::to_string).collect();
                if let Some(before) = units.insert(path, layer) {
                    return Err(format!("`{unit}` is in layers {before} and {layer}"));
                }
            }
        }
        if units.is_empty() {
            return Err("the `# Layers` table has no rows (`N  unit … | description`)".into());
        }
        Ok(Table { units })
    }

    /// The unit a module path belongs to: the table's longest entry that is a prefix of it.
    fn unit_of(&self, path: &[String]) -> Option<(&ModPath, u32)> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.units.get_key_value(&path[..n]).map(|(k, l)| (k, *l)))
    }
}

/// The allow-listed edges: `from -> to  # reason`, one a line.
struct Allow {
    edges: BTreeMap<(String, String), usize>,
}

impl Allow {
    fn parse(text: &str) -> Result<Allow, String> {
        let mut edges = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (edge, reason) = line
                .split_once('#')
                .ok_or(format!("line {n}: no `# reason`"))?;
            if reason.trim().is_empty() {
                return Err(format!("line {n}: empty reason"));
            }
            let (from, to) = edge
                .split_once("->")
                .ok_or(format!("line {n}: expected `from -> to  # reason`"))?;
            let key = (from.trim().to_string(), to.trim().to_string());
            if edges.insert(key, n).is_some() {
                return Err(format!("line {n}: listed twice"));
            }
        }
        Ok(Allow { edges })
    }
}

/// Where a reference was made.
#[derive(Clone, Debug)]
struct Site {
    file: String,
    line: usize,
}

/// Checks `sources` (paths relative to `src/`, with their text) against the table and the
/// allow-list; returns one message per problem.
fn check(sources: &[(String, String)], table: &Table, allow: &Allow) -> Vec<String> {
    let mut problems = Vec::new();
    let name = |p: &ModPath| p.join("::");

    // The crate root's re-exports (`pub use config::Config`), so `crate::Config` lands on `config`.
    let mut root_aliases: BTreeMap<String, ModPath> = BTreeMap::new();
    if let Some((_, lib)) = sources.iter().find(|(f, _)| f == "lib.rs") {
        for r in references(&[], lib) {
            if r.is_use && !r.path.is_empty() {
                root_aliases.insert(
                    r.alias
                        .clone()
                        .unwrap_or_else(|| r.path.last().unwrap().clone()),
                    r.path,
                );
            }
        }
    }

    let mut edges: BTreeMap<(ModPath, ModPath), Vec<Site>> = BTreeMap::new();
    for (file, text) in sources {
        let Some(module) = file_module(file) else {
            problems.push(format!(
                "connection-host/src/{file}: not a module file this check understands"
            ));
            continue;
        };
        if module.is_empty() {
            continue; // the crate root declares and re-exports every module
        }
        let Some((from, _)) = table.unit_of(&module) else {
            problems.push(format!(
                "connection-host/src/{file}: module `{}` has no layer; add it to the `# Layers` table in \
                 connection-host/src/lib.rs",
                name(&module)
            ));
            continue;
        };
        for r in references(&module, text) {
            let mut path = r.path;
            if let Some(target) = path.first().and_then(|s| root_aliases.get(s)) {
                path.splice(..1, target.iter().cloned());
            }
            let Some((to, _)) = table.unit_of(&path) else {
                problems.push(format!(
                    "connection-host/src/{file}:{}: `crate::{}` is in no unit of the layer table",
                    r.line,
                    name(&path)
                ));
                continue;
            };
            if to != from {
                let sites = edges.entry((from.clone(), to.clone())).or_default();
                if !sites.iter().any(|s| s.file == *file && s.line == r.line) {
                    sites.push(Site {
                        file: file.clone(),
                        line: r.line,
                    });
                }
            }
        }
    }

    let mut kept: BTreeSet<(ModPath, ModPath)> = BTreeSet::new();
    for ((from, to), sites) in &edges {
        let (lf, lt) = (table.units[from], table.units[to]);
        let listed = allow.edges.contains_key(&(name(from), name(to)));
        if lt > lf && !listed {
            for s in sites {
                problems.push(format!(
                    "connection-host/src/{}:{}: `{}` (layer {lf}) imports `{}` (layer {lt}); a module may \
                     import only modules in lower layers: move what it needs down, or invert the call",
                    s.file,
                    s.line,
                    name(from),
                    name(to)
                ));
            }
        }
        if lt == lf && !listed {
            kept.insert((from.clone(), to.clone()));
        }
    }
    for ((from, to), line) in &allow.edges {
        let key = (split(from), split(to));
        match (edges.contains_key(&key), table.units.get(&key.0), table.units.get(&key.1)) {
            (false, _, _) => problems.push(format!(
                "connection-host/layering-allow.txt:{line}: `{from} -> {to}` no longer exists; remove it \
                 from the list"
            )),
            (true, Some(lf), Some(lt)) if lt < lf => problems.push(format!(
                "connection-host/layering-allow.txt:{line}: `{from} -> {to}` points down (layer {lf} to \
                 {lt}), which is allowed anyway; remove it from the list"
            )),
            _ => {}
        }
    }
    for cycle in cycles(&kept) {
        let mut msg = format!("import cycle within layer {}: ", table.units[&cycle[0]]);
        let names: Vec<String> = cycle.iter().map(&name).collect();
        msg.push_str(&names.join(" -> "));
        write!(msg, " -> {}", names[0]).unwrap();
        for pair in cycle.iter().zip(cycle.iter().cycle().skip(1)) {
            let s = &edges[&(pair.0.clone(), pair.1.clone())][0];
            write!(
                msg,
                "\n    {} -> {} at connection-host/src/{}:{}",
                name(pair.0),
                name(pair.1),
                s.file,
                s.line
            )
            .unwrap();
        }
        problems.push(msg);
    }
    problems
}

fn split(unit: &str) -> ModPath {
    unit.split("::").map(str::to_string).collect()
}

/// The module a file defines: `lib.rs` is the root, `a.rs` and `a/mod.rs` are `a`, `a/b.rs` is `a::b`.
fn file_module(file: &str) -> Option<ModPath> {
    let stem = file.strip_suffix(".rs")?;
    let mut parts: ModPath = stem.split('/').map(str::to_string).collect();
    if parts == ["lib"] {
        return Some(Vec::new());
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (!parts.is_empty()).then_some(parts)
}

/// One cycle for each strongly connected set of more than one unit, as the units in cycle order.
fn cycles(edges: &BTreeSet<(ModPath, ModPath)>) -> Vec<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let mut found: Vec<Vec<ModPath>> = Vec::new();
    let mut covered: BTreeSet<ModPath> = BTreeSet::new();
    for start in next.keys() {
        if covered.contains(*start) {
            continue;
        }
        // The shortest path from `start` back to itself, breadth first.
        let mut parent: BTreeMap<&ModPath, &ModPath> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([*start]);
        let mut closing = None;
        while let Some(u) = queue.pop_front() {
            for v in next.get(u).into_iter().flatten() {
                if v == start {
                    closing = Some(u);
                    break;
                }
                if !parent.contains_key(v) {
                    parent.insert(v, u);
                    queue.push_back(v);
                }
            }
            if closing.is_some() {
                break;
            }
        }
        if let Some(mut u) = closing {
            let mut cycle = vec![u.clone()];
            while u != *start {
                u = parent[u];
                cycle.push(u.clone());
            }
            cycle.reverse();
            covered.extend(cycle.iter().cloned());
            found.push(cycle);
        }
    }
    found
}

/// A path to another module, as written in the source.
#[derive(Debug, PartialEq)]
struct Reference {
    /// Resolved to a path from the crate root.
    path: ModPath,
    /// The `as` name of a `use` item.
    alias: Option<String>,
    is_use: bool,
    line: usize,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The tokens of Rust source that matter for paths, with their line numbers: comments, string,
/// character and number literals and lifetimes are dropped.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        line += usize::from(b[i] == b'\n');
                        i += 1;
                    }
                }
            }
            // Raw strings: r"…", r#"…"#, br#"…"#, cr"…".
            b'r' | b'b' | b'c' if raw_string_start(&b[i..]).is_some() => {
                let (skip, hashes) = raw_string_start(&b[i..]).unwrap();
                i += skip;
                let mut close = vec![b'"'];
                close.extend(std::iter::repeat_n(b'#', hashes));
                while i < b.len() && !b[i..].starts_with(&close) {
                    line += usize::from(b[i] == b'\n');
                    i += 1;
                }
                i += close.len();
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    line += usize::from(b.get(i) == Some(&b'\n'));
                    i += 1;
                }
                i += 1;
            }
            b'\'' => {
                // A character literal ('a', '\n', '\u{..}', 'é') or a lifetime ('a).
                if b.get(i + 1) == Some(&b'\\') {
                    i += 3; // the quote, the backslash and the escaped character
                    while i < b.len() && b[i] != b'\'' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                    if b.get(i + 1 + ch_len) == Some(&b'\'') {
                        i += 2 + ch_len;
                    } else {
                        i += 1;
                        while i < b.len() && ident(b[i]) {
                            i += 1;
                        }
                    }
                }
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push((Tok::Sep, line));
                i += 2;
            }
            _ if c.is_ascii_digit() => {
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
            }
            _ if ident(c) || c >= 0x80 => {
                let start = i;
                while i < b.len() && (ident(b[i]) || b[i] >= 0x80) {
                    i += 1;
                }
                out.push((Tok::Ident(src[start..i].to_string()), line));
            }
            _ => {
                out.push((Tok::Punct(c as char), line));
                i += 1;
            }
        }
    }
    out
}

/// `(bytes before the string's body, number of #)` when `b` starts a raw string literal.
fn raw_string_start(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    if b.first() == Some(&b'b') || b.first() == Some(&b'c') {
        i += 1;
    }
    if b.get(i) != Some(&b'r') {
        return None;
    }
    i += 1;
    let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
    i += hashes;
    (b.get(i) == Some(&b'"')).then_some((i + 1, hashes))
}

/// The references to modules in `text`, the source of module `module`: every path that starts with
/// `crate`, `super`, `self` or a child module declared in the same scope, with `use` groups expanded.
fn references(module: &[String], text: &str) -> Vec<Reference> {
    let toks = tokenize(text);
    let mut refs = Vec::new();
    // Inline modules (`mod tests { … }`): (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    // Child modules declared in each scope (file module or inline module).
    let mut children: BTreeMap<ModPath, BTreeSet<String>> = BTreeMap::new();
    let current = |inline: &[(String, usize)]| -> ModPath {
        module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect()
    };
    // First pass: child module declarations per scope.
    {
        let mut stack: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        for (k, (t, _)) in toks.iter().enumerate() {
            match t {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    if stack.last().is_some_and(|(_, d)| *d == depth) {
                        stack.pop();
                    }
                    depth -= 1;
                }
                Tok::Ident(w) if w == "mod" => {
                    if let Some((Tok::Ident(name), _)) = toks.get(k + 1) {
                        children
                            .entry(current(&stack))
                            .or_default()
                            .insert(name.clone());
                        if toks.get(k + 2).map(|t| &t.0) == Some(&Tok::Punct('{')) {
                            stack.push((name.clone(), depth + 1));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut depth = 0;
    let mut k = 0;
    // Whether the tokens since the last `;`, `{` or `}` began with `use`.
    let mut in_use = false;
    let mut statement_start = true;
    while k < toks.len() {
        let (t, line) = &toks[k];
        match t {
            Tok::Punct('{') | Tok::Punct(';') | Tok::Punct('}') => {
                if *t == Tok::Punct('{') {
                    depth += 1;
                } else if *t == Tok::Punct('}') {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                }
                in_use = false;
                statement_start = true;
                k += 1;
                continue;
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some((Tok::Ident(name), _)), Some((Tok::Punct('{'), _))) =
                    (toks.get(k + 1), toks.get(k + 2))
                {
                    inline.push((name.clone(), depth + 1));
                    depth += 1;
                    k += 3;
                    statement_start = true;
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" && statement_start => in_use = true,
            _ => {}
        }
        statement_start = matches!(
            t,
            Tok::Punct('#') | Tok::Punct(']') | Tok::Punct('(') | Tok::Punct(')')
        ) || matches!(t, Tok::Ident(w) if w == "pub" || w == "crate" && toks.get(k + 1).map(|t| &t.0) == Some(&Tok::Punct(')')));
        let here = current(&inline);
        let path_start = matches!(t, Tok::Ident(_))
            && toks.get(k + 1).map(|t| &t.0) == Some(&Tok::Sep)
            && !matches!(
                k.checked_sub(1).map(|p| &toks[p].0),
                Some(Tok::Sep) | Some(Tok::Punct('$'))
            );
        if path_start {
            let Tok::Ident(first) = t else { unreachable!() };
            let base: Option<ModPath> = match first.as_str() {
                "crate" => Some(Vec::new()),
                "self" => Some(here.clone()),
                "super" => Some(here[..here.len().saturating_sub(1)].to_vec()),
                name if children.get(&here).is_some_and(|c| c.contains(name)) => {
                    Some(here.iter().cloned().chain([name.to_string()]).collect())
                }
                _ => None,
            };
            if let Some(base) = base {
                let mut j = k + 2;
                let mut out = Vec::new();
                use_tree(&toks, &mut j, base, in_use, &mut out);
                for (path, alias) in out {
                    refs.push(Reference {
                        path,
                        alias,
                        is_use: in_use,
                        line: *line,
                    });
                }
                k = j;
                continue;
            }
        }
        k += 1;
    }
    refs
}

/// Reads a path (or, in a `use`, a tree with `{…}` groups) from `toks[*j]`, after `base::`;
/// pushes every full path with its `as` alias, and leaves `*j` after it.
fn use_tree(
    toks: &[(Tok, usize)],
    j: &mut usize,
    mut base: ModPath,
    in_use: bool,
    out: &mut Vec<(ModPath, Option<String>)>,
) {
    let mut leading = true;
    loop {
        match toks.get(*j).map(|t| &t.0) {
            Some(Tok::Ident(s)) if s == "super" && leading => {
                base.pop();
                *j += 1;
            }
            Some(Tok::Ident(s)) if s == "self" => *j += 1,
            Some(Tok::Ident(s)) => {
                leading = false;
                base.push(s.clone());
                *j += 1;
            }
            Some(Tok::Punct('{')) if in_use => {
                *j += 1;
                loop {
                    match toks.get(*j).map(|t| &t.0) {
                        None => return,
                        Some(Tok::Punct('}')) => {
                            *j += 1;
                            return;
                        }
                        Some(Tok::Punct(',')) => *j += 1,
                        Some(_) => {
                            let before = *j;
                            use_tree(toks, j, base.clone(), in_use, out);
                            if *j == before {
                                *j += 1; // `*` or anything else that names no module
                            }
                        }
                    }
                }
            }
            _ => {
                // `*`, a turbofish or the end of the path: the path so far is the reference.
                if matches!(toks.get(*j).map(|t| &t.0), Some(Tok::Punct('*'))) {
                    *j += 1;
                }
                out.push((base, None));
                return;
            }
        }
        match toks.get(*j).map(|t| &t.0) {
            Some(Tok::Sep) => *j += 1,
            Some(Tok::Ident(a)) if a == "as" => {
                let alias = match toks.get(*j + 1).map(|t| &t.0) {
                    Some(Tok::Ident(n)) => Some(n.clone()),
                    _ => None,
                };
                *j += 2;
                out.push((base, alias));
                return;
            }
            _ => {
                out.push((base, None));
                return;
            }
        }
    }
}

#[cfg(test)]
mod checker {
    use super::*;

    fn paths(module: &[&str], text: &str) -> Vec<(String, usize)> {
        let module: ModPath = module.iter().map(|s| s.to_string()).collect();
        references(&module, text)
            .into_iter()
            .map(|r| (r.path.join("::"), r.line))
            .collect()
    }

    #[test]
    fn use_groups_super_and_child_modules_resolve_from_the_root() {
        let src = "use crate::{a, b::{c, d as e}, f::*};\n\
                   // use crate::comment;\n\
                   let s = \"crate::string\"; let r = r#\"crate::raw\"#; let c = '\"'; fn f<'a>() {}\n\
                   mod kid;\n\
                   fn g() { crate::h::i(); super::sib::x(); kid::y(); $crate::mac::z(); std::io::stdin(); }\n\
                   mod tests { use super::*; use super::super::up; }\n";
        assert_eq!(
            paths(&["top", "me"], src),
            [
                ("a".into(), 1),
                ("b::c".into(), 1),
                ("b::d".into(), 1),
                ("f".into(), 1),
                ("h::i".into(), 5),
                ("top::sib::x".into(), 5),
                ("top::me::kid::y".into(), 5),
                ("top::me".into(), 6),
                ("top::up".into(), 6),
            ]
        );
    }

    fn table() -> Table {
        Table::from_crate_docs(
            "//! # Layers\n//! ```text\n//! layer  units | role\n//! 2  front | front ends\n\
             //! 1  mid mid::sub_up | adapters\n//! 0  leaf | formats\n//! ```\n",
        )
        .unwrap()
    }

    fn run(files: &[(&str, &str)], allow: &str) -> Vec<String> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        check(&files, &table(), &Allow::parse(allow).unwrap())
    }

    #[test]
    fn an_upward_import_fails_naming_file_line_and_rule() {
        let files = [
            ("leaf.rs", "\nuse crate::{mid::X, leaf};\n"),
            ("mid/mod.rs", "use crate::leaf::Y;"),
        ];
        let problems = run(&files, "");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with(
            "connection-host/src/leaf.rs:2: `leaf` (layer 0) imports `mid` (layer 1)"
        ));
        assert!(run(&files, "leaf -> mid  # waiting for the split").is_empty());
    }

    #[test]
    fn a_stale_or_downward_allowance_fails() {
        let files = [("mid/mod.rs", "use crate::leaf::Y;")];
        let problems = run(
            &files,
            "front -> mid  # gone\nmid -> leaf  # never needed\n",
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("`front -> mid` no longer exists; remove it from the list"));
        assert!(problems[1].contains("`mid -> leaf` points down"));
    }

    #[test]
    fn unplaced_modules_and_same_layer_cycles_fail() {
        let files = [
            ("mid/mod.rs", "pub mod sub_up;\nuse crate::front::F;"),
            ("front.rs", "use crate::other::O;"),
            ("other.rs", ""),
            ("leaf.rs", ""),
        ];
        let problems = run(&files, "mid -> front  # pending");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("module `other` has no layer")),
            "{problems:?}"
        );

        let files = [
            ("mid/mod.rs", "mod sub_up;\nuse sub_up::S;"),
            ("mid/sub_up.rs", "use super::M;"),
        ];
        let problems = run(&files, "");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("import cycle within layer 1: mid -> mid::sub_up -> mid"),
            "{problems:?}"
        );
    }
}
