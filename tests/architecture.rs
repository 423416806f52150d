//! The layers of `src/lib.rs`, held: the test reads the numbered layer list
//! in `lib.rs`'s module note and every source file of the library, and fails,
//! naming the file and the import, when
//! - a module imports a module of a layer above its own,
//! - top-level modules import each other in a cycle (of any length), or
//! - files of one module do (a parent's `mod` and `use` of its own children
//!   are how Rust builds a module, and do not count; the rest do).
//!
//! The binary's own modules (`main.rs` and the `mod`s it declares, the
//! benchmark) sit above the library and may use any of it; they are not read.
//! The reading is lexical, with no compiler: comments and string literals are
//! dropped, then every `crate::…` and `super::…` path (through `use` trees
//! with braces too) is resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The checkout under test, read at run time: test binaries are shared
/// between checkouts through one target folder, and `env!` would carry the
/// path of the checkout that compiled them.
fn project_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn the_library_follows_its_layers_without_cycles() {
    let src = project_root().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let layers = layers(&lib);
    assert!(
        layers.len() >= 5,
        "src/lib.rs should list its layers as a numbered list in its module note (`//! 1. [`worker`]: …`); found {layers:?}"
    );
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap_or_default();
    let binary: BTreeSet<String> = declared_modules(&strip(&main)).into_iter().collect();
    let files = library_files(&src, &binary);
    let modules: BTreeSet<String> = files.keys().cloned().collect();

    let declared: BTreeSet<String> = declared_modules(&strip(&lib)).into_iter().collect();
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    let unlisted: Vec<_> = declared.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&declared).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "src/lib.rs's layer list and its `pub mod`s disagree: modules in no layer: {unlisted:?}; \
         listed but not declared: {gone:?}"
    );

    let mut problems = String::new();
    let mut top_edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut file_edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (module, path) in &files {
        let code = strip(&std::fs::read_to_string(path).expect("a source file"));
        let shown = path
            .strip_prefix(src.parent().unwrap())
            .unwrap_or(path)
            .display();
        for import in imports(&code) {
            let Some(target) = resolve(module, &import, &modules) else {
                continue;
            };
            let named = format!("{shown}: {}", import.join("::"));
            let (from_top, to_top) = (top(module), top(&target));
            if from_top != to_top {
                let (from_layer, to_layer) = (layers[from_top], layers[to_top]);
                if to_layer < from_layer {
                    let _ = writeln!(
                        problems,
                        "upward import: {named} ({from_top}, layer {from_layer}, imports {to_top}, layer {to_layer})"
                    );
                }
                top_edges
                    .entry((from_top.to_owned(), to_top.to_owned()))
                    .or_default()
                    .push(named);
            } else if target != *module && !is_within(&target, module) {
                file_edges
                    .entry((module.clone(), target))
                    .or_default()
                    .push(named);
            }
        }
    }
    for cycle in cycles(&top_edges).into_iter().chain(cycles(&file_edges)) {
        let _ = writeln!(
            problems,
            "modules import each other: {}",
            cycle.join(" -> ")
        );
        for pair in cycle.windows(2) {
            if let Some(named) = top_edges
                .get(&(pair[0].clone(), pair[1].clone()))
                .or_else(|| file_edges.get(&(pair[0].clone(), pair[1].clone())))
            {
                let _ = writeln!(problems, "    {}", named[0]);
            }
        }
    }
    assert!(
        problems.is_empty(),
        "src/ breaks its layers (src/lib.rs):\n{problems}"
    );
}

/// Each top-level module's layer, from `//! N. [`a`], [`b`]: …` items: the
/// modules named before the item's first colon (which may be on one of
/// the item's next lines).
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    // The layer being read and its text so far, until its colon.
    let mut open: Option<(usize, String)> = None;
    for line in lib.lines() {
        let Some(doc) = line.trim_start().strip_prefix("//!") else {
            continue;
        };
        let doc = doc.trim_start();
        let numbered = doc
            .split_once(". ")
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)));
        let (layer, mut text) = match (numbered, open.take()) {
            (Some((layer, rest)), _) => (layer, rest.to_owned()),
            (None, Some((layer, text))) => (layer, format!("{text} {doc}")),
            (None, None) => continue,
        };
        let Some((head, _)) = text.split_once(':') else {
            open = Some((layer, text));
            continue;
        };
        for part in head.split("[`").skip(1) {
            if let Some((name, _)) = part.split_once("`]") {
                out.insert(name.to_owned(), layer);
            }
        }
        text.clear();
    }
    out
}

/// `mod name;` and `pub mod name;` declared in `code` (comments stripped).
fn declared_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim();
        let line = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(name) = line.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
            out.push(name.trim().to_owned());
        }
    }
    out
}

/// The library's files by module path (`store::edge`), leaving out
/// `lib.rs`, `main.rs` and the binary's modules.
fn library_files(src: &Path, binary: &BTreeSet<String>) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut out = BTreeMap::new();
    for path in paths {
        let relative = path.strip_prefix(src).expect("under src/");
        let mut parts: Vec<String> = relative
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] || binary.contains(&parts[0]) {
            continue;
        }
        out.insert(parts.join("::"), path);
    }
    out
}

/// `code` with comments and the insides of string and char literals
/// removed (a string becomes `""`), so only code is searched.
fn strip(code: &str) -> String {
    let b: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            // An escaped char literal: '\n', '\'', '\u{…}'.
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every path that starts with `crate::` or `super::` in `code`, `use`
/// trees expanded: `crate::a::{b, c::{d, self}}` gives `crate::a::b`,
/// `crate::a::c::d` and `crate::a::c`.
fn imports(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let rest: String = chars[i..chars.len().min(i + 7)].iter().collect();
        if starts_word && (rest.starts_with("crate::") || rest.starts_with("super::")) {
            let mut j = i;
            let mut paths = Vec::new();
            tree(&chars, &mut j, Vec::new(), &mut paths);
            out.extend(paths);
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Read one path or `use` tree at `*i`, prefixed by `prefix`, into `out`.
fn tree(chars: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        skip_space(chars, i);
        if chars.get(*i) == Some(&'{') {
            *i += 1;
            loop {
                skip_space(chars, i);
                match chars.get(*i) {
                    None => return,
                    Some('}') => {
                        *i += 1;
                        return;
                    }
                    Some(',') => *i += 1,
                    _ => {
                        let before = *i;
                        tree(chars, i, path.clone(), out);
                        if *i == before {
                            *i += 1;
                        }
                    }
                }
            }
        }
        let start = *i;
        while chars
            .get(*i)
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
        {
            *i += 1;
        }
        if *i == start {
            break;
        }
        let word: String = chars[start..*i].iter().collect();
        if word != "self" {
            path.push(word);
        }
        skip_space(chars, i);
        if chars.get(*i) == Some(&':') && chars.get(*i + 1) == Some(&':') {
            *i += 2;
        } else {
            break;
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
}

fn skip_space(chars: &[char], i: &mut usize) {
    while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
        *i += 1;
    }
}

/// The module an import from `module` names: `crate::`/`super::` made
/// absolute, then the longest prefix that is a module of the library.
fn resolve(module: &str, import: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut base: Vec<&str> = module.split("::").collect();
    let mut rest = import;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    let mut full: Vec<&str> = base;
    full.extend(rest.iter().map(String::as_str));
    (1..=full.len())
        .rev()
        .map(|n| full[..n].join("::"))
        .find(|candidate| modules.contains(candidate))
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Whether `inner` is a module inside `outer` (a child, a grandchild…).
fn is_within(inner: &str, outer: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.starts_with("::"))
}

/// The cycles of a graph given by its edges: one for each strongly
/// connected component of more than one node, the shortest closed walk
/// through its first node (`a -> b -> a`).
fn cycles(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // Breadth-first from `start`: each reached node with the node it was
    // reached from.
    fn search<'a>(
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        start: &'a str,
    ) -> BTreeMap<&'a str, &'a str> {
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for &to in next.get(node).into_iter().flatten() {
                if !parent.contains_key(to) {
                    parent.insert(to, node);
                    queue.push_back(to);
                }
            }
        }
        parent
    }
    let reached: BTreeMap<&str, BTreeMap<&str, &str>> =
        next.keys().map(|&n| (n, search(&next, n))).collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    for (&start, parent) in &reached {
        if placed.contains(start) || !parent.contains_key(start) {
            continue;
        }
        // Its component: what it reaches that reaches it back.
        for &node in parent.keys() {
            if reached.get(node).is_some_and(|p| p.contains_key(start)) {
                placed.insert(node);
            }
        }
        let mut walk = vec![start.to_owned()];
        let mut node = parent[start];
        while node != start {
            walk.push(node.to_owned());
            node = parent[node];
        }
        walk.push(start.to_owned());
        walk.reverse();
        found.push(walk);
    }
    found
}

#[test]
fn layers_are_read_from_the_numbered_list() {
    let lib = "//! # Layers\n//!\n//! 1. [`worker`]: start-up; see [`config`].\n\
               //! 2. [`store`], [`embed`]: the stores\n//!    and [`more`]: not a layer.\n\
               //! 3. [`base`],\n//!    [`wrapped`]: on two lines.\n\
               //! * [`other`]: not numbered.\n";
    let layers = layers(lib);
    assert_eq!(layers.len(), 5, "{layers:?}");
    assert_eq!(layers["wrapped"], 3);
    assert_eq!(layers["worker"], 1);
    assert_eq!(layers["store"], 2);
    assert_eq!(layers["embed"], 2);
}

#[test]
fn comments_and_strings_are_not_searched() {
    let code = "use crate::a::B; // crate::c::D\n/* crate::e /* crate::f */ */\n\
                let s = \"crate::g\"; let r = r#\"crate::h\"#; let c = '\"'; let l: &'a str = x;\n\
                crate::i::j();";
    let found: Vec<String> = imports(&strip(code)).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["crate::a::B", "crate::i::j"]);
}

#[test]
fn use_trees_are_expanded() {
    let code = "use crate::store::{payload::{self, IndexPolicy}, Page};\nuse super::super::x::Y;";
    let found: Vec<String> = imports(&strip(code)).iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::store::payload",
            "crate::store::payload::IndexPolicy",
            "crate::store::Page",
            "super::super::x::Y"
        ]
    );
}

#[test]
fn imports_resolve_to_the_longest_module() {
    let modules: BTreeSet<String> = ["store", "store::payload", "transport", "transport::ingest"]
        .map(String::from)
        .into();
    let path = |p: &str| p.split("::").map(String::from).collect::<Vec<_>>();
    assert_eq!(
        resolve(
            "transport",
            &path("crate::store::payload::IndexPolicy"),
            &modules
        )
        .as_deref(),
        Some("store::payload")
    );
    assert_eq!(
        resolve("transport::ingest", &path("super::Shared"), &modules).as_deref(),
        Some("transport")
    );
    assert_eq!(resolve("store", &path("crate::nowhere::X"), &modules), None);
}

#[test]
fn a_cycle_is_found_and_walked() {
    let edge = |a: &str, b: &str| ((a.to_owned(), b.to_owned()), vec![format!("{a}->{b}")]);
    let edges: BTreeMap<_, _> = [
        edge("a", "b"),
        edge("b", "c"),
        edge("c", "a"),
        edge("c", "d"),
    ]
    .into();
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c", "a"]]);
    let acyclic: BTreeMap<_, _> = [edge("a", "b"), edge("b", "c")].into();
    assert!(cycles(&acyclic).is_empty());
}
