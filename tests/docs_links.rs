//! The documentation's links: every relative Markdown link in `README.md`,
//! `docs/*.md` and `python/README.md` names a file or folder that exists,
//! and every `#anchor` names a heading of the file it points into.
//!
//! Anchors follow GitHub's slug rule: the heading's text (inline code
//! without its backticks, a link's text without its target), lower case,
//! every character other than a letter, a digit, a space, `-` or `_`
//! dropped, each space a `-`; a slug met again gets `-1`, `-2`, … Links
//! inside fenced code blocks and inline code are not links; `http:`,
//! `https:` and `mailto:` links are not checked. Standard library only.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    let text = heading_text(heading);
    text.chars()
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A heading's text as GitHub renders it: backticks gone, `[text](target)`
/// as its text, leading and trailing spaces trimmed.
fn heading_text(heading: &str) -> String {
    let mut out = String::new();
    let chars: Vec<char> = heading.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '`' => {}
            '[' => {
                if let Some((text_end, after)) = link_at(&chars, i) {
                    out.extend(&chars[i + 1..text_end]);
                    i = after;
                    continue;
                }
                out.push('[');
            }
            c => out.push(c),
        }
        i += 1;
    }
    out.trim().to_owned()
}

/// The lines of `markdown` with every fenced code block's lines (fences
/// included) blanked, so line numbers stay as they were.
fn without_fences(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    // The open fence: its character and length.
    let mut fence: Option<(char, usize)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start_matches(' ');
        let indent = line.len() - trimmed.len();
        let marker = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        let run = marker.map_or(0, |m| trimmed.chars().take_while(|c| *c == m).count());
        match (fence, marker) {
            (None, Some(m)) if indent <= 3 && run >= 3 => {
                // An opening fence of backticks has no backtick after it.
                if m == '~' || !trimmed[run..].contains('`') {
                    fence = Some((m, run));
                    lines.push(String::new());
                    continue;
                }
                lines.push(line.to_owned());
            }
            (Some((m, n)), Some(c))
                if c == m && indent <= 3 && run >= n && trimmed[run..].trim().is_empty() =>
            {
                fence = None;
                lines.push(String::new());
            }
            (Some(_), _) => lines.push(String::new()),
            (None, _) => lines.push(line.to_owned()),
        }
    }
    lines
}

/// Every ATX heading's slug, outside fenced code, with GitHub's `-1`, `-2`
/// for repeats.
fn slugs(markdown: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    for line in without_fences(markdown) {
        let trimmed = line.trim_start_matches(' ');
        if line.len() - trimmed.len() > 3 {
            continue;
        }
        let level = trimmed.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&level) {
            continue;
        }
        let rest = &trimmed[level..];
        if !(rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t')) {
            continue;
        }
        // A closing run of `#` goes, when a space comes before it.
        let mut text = rest.trim();
        let stripped = text.trim_end_matches('#');
        if stripped.is_empty() || stripped.ends_with(' ') {
            text = stripped.trim_end();
        }
        let base = slug(text);
        let n = seen.entry(base.clone()).or_insert(0);
        let unique = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        out.insert(unique);
    }
    out
}

/// At `chars[start] == '['`: a link or image `[text](target)` starting
/// there, as the index of its closing `]` and the index after its `)`.
fn link_at(chars: &[char], start: usize) -> Option<(usize, usize)> {
    let mut depth = 0;
    let mut i = start;
    let close = loop {
        match chars.get(i)? {
            '\\' => i += 1,
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    break i;
                }
            }
            _ => {}
        }
        i += 1;
    };
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let mut parens = 0;
    let mut j = close + 1;
    loop {
        match chars.get(j)? {
            '\\' => j += 1,
            '(' => parens += 1,
            ')' => {
                parens -= 1;
                if parens == 0 {
                    return Some((close, j + 1));
                }
            }
            _ => {}
        }
        j += 1;
    }
}

/// A link's destination without its angle brackets or title.
fn destination(raw: &str) -> String {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('<') {
        return rest.split('>').next().unwrap_or("").to_owned();
    }
    raw.split_whitespace().next().unwrap_or("").to_owned()
}

/// Every link and image in `markdown` as (line, target), outside fenced
/// code blocks and inline code. Targets with a scheme other than a file's
/// (`http:`, `https:`, `mailto:`) are left out.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let lines = without_fences(markdown);
    let mut out = Vec::new();
    // Paragraphs: code spans and links do not cross a blank line.
    let mut block: Vec<(usize, &str)> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            links_in_block(&block, &mut out);
            block.clear();
        } else {
            block.push((n + 1, line));
        }
    }
    links_in_block(&block, &mut out);
    out.retain(|(_, target)| {
        let lower = target.to_ascii_lowercase();
        !["http:", "https:", "mailto:"]
            .iter()
            .any(|scheme| lower.starts_with(scheme))
    });
    out
}

fn links_in_block(block: &[(usize, &str)], out: &mut Vec<(usize, String)>) {
    // The block's characters, each with its line.
    let mut chars = Vec::new();
    let mut line_of = Vec::new();
    for (n, line) in block {
        for c in line.chars() {
            chars.push(c);
            line_of.push(*n);
        }
        chars.push('\n');
        line_of.push(*n);
    }
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '`' => {
                let run = chars[i..].iter().take_while(|c| **c == '`').count();
                i += run;
                // The code span ends at the next run of exactly as many
                // backticks; without one, the backticks are text.
                let mut j = i;
                while j < chars.len() {
                    if chars[j] == '`' {
                        let other = chars[j..].iter().take_while(|c| **c == '`').count();
                        if other == run {
                            i = j + other;
                            break;
                        }
                        j += other;
                    } else {
                        j += 1;
                    }
                }
            }
            '[' => match link_at(&chars, i) {
                Some((close, after)) => {
                    let raw: String = chars[close + 2..after - 1].iter().collect();
                    out.push((line_of[i], destination(&raw)));
                    // Links inside the text (an image in a link) count too.
                    i += 1;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
}

/// What is wrong with each relative link of the Markdown file at `path`.
fn check(root: &Path, path: &Path, cache: &mut HashMap<PathBuf, HashSet<String>>) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shown = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let dir = path.parent().unwrap_or(root);
    let mut problems = Vec::new();
    for (line, target) in links(&text) {
        if target.is_empty() {
            problems.push(format!("{shown}:{line}: empty link target"));
            continue;
        }
        let (file, anchor) = match target.split_once('#') {
            Some((file, anchor)) => (file, Some(anchor)),
            None => (target.as_str(), None),
        };
        let file = file.split('?').next().unwrap_or(file);
        let resolved = if file.is_empty() {
            path.to_path_buf()
        } else if let Some(from_root) = file.strip_prefix('/') {
            root.join(from_root)
        } else {
            dir.join(file)
        };
        if !resolved.exists() {
            problems.push(format!(
                "{shown}:{line}: link ({target}): {} does not exist",
                resolved.strip_prefix(root).unwrap_or(&resolved).display()
            ));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        let is_markdown = resolved.extension().is_some_and(|e| e == "md");
        if !is_markdown || resolved.is_dir() {
            problems.push(format!(
                "{shown}:{line}: link ({target}): an anchor into a file that is not Markdown"
            ));
            continue;
        }
        let key = resolved.canonicalize().unwrap_or(resolved.clone());
        let headings = cache
            .entry(key)
            .or_insert_with(|| slugs(&fs::read_to_string(&resolved).unwrap_or_default()));
        if !headings.contains(anchor) {
            problems.push(format!(
                "{shown}:{line}: link ({target}): no heading with the anchor #{anchor} in {}",
                resolved.strip_prefix(root).unwrap_or(&resolved).display()
            ));
        }
    }
    problems
}

/// The files checked: README.md, every docs/*.md, python/README.md.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let docs = root.join("docs");
    let mut pages: Vec<PathBuf> = fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("{}: {e}", docs.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    let python = root.join("python/README.md");
    if python.exists() {
        files.push(python);
    }
    files
}

/// The checkout under test, read at run time: test binaries are shared
/// between checkouts through one target folder, and `env!` would carry the
/// path of the checkout that compiled them.
fn project_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

#[test]
fn every_relative_link_resolves() {
    let root_dir = project_root();
    let root = root_dir.as_path();
    let mut cache = HashMap::new();
    let files = documents(root);
    assert!(files.len() > 2, "no docs/*.md found");
    let problems: Vec<String> = files
        .iter()
        .flat_map(|f| check(root, f, &mut cache))
        .collect();
    assert!(
        problems.is_empty(),
        "{} broken link(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_page_starts_with_a_title() {
    let root_dir = project_root();
    let root = root_dir.as_path();
    for file in documents(root) {
        let text = fs::read_to_string(&file).unwrap();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("# "),
            "{}: the first line is not a `# Title`: {first:?}",
            file.display()
        );
    }
}

#[test]
fn slugs_follow_githubs_rule() {
    assert_eq!(
        slug("Layouts: a store per tenant, or one for all"),
        "layouts-a-store-per-tenant-or-one-for-all"
    );
    assert_eq!(
        slug("Scaling out: a fleet of workers (`cluster.enabled`)"),
        "scaling-out-a-fleet-of-workers-clusterenabled"
    );
    assert_eq!(slug("`admin.stats`"), "adminstats");
    assert_eq!(
        slug("Request partitions: one tenant's flood on its own connection"),
        "request-partitions-one-tenants-flood-on-its-own-connection"
    );
    assert_eq!(slug("snake_case and CAPS"), "snake_case-and-caps");
    assert_eq!(slug("A & B"), "a--b");
    assert_eq!(slug("Time → money, 2×"), "time--money-2");
    assert_eq!(slug("See [the docs](docs/x.md) now"), "see-the-docs-now");
    assert_eq!(slug("Ünïcode stays"), "ünïcode-stays");
}

#[test]
fn repeated_headings_are_numbered_and_fenced_ones_ignored() {
    let md = "# A\n\n## A\n\n```\n# Not a heading\n```\n\n### A ###\n#Not\n    # indented code\n";
    let found = slugs(md);
    let expected: HashSet<String> = ["a", "a-1", "a-2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected);
}

#[test]
fn links_are_found_outside_code() {
    let md = "\
See [one](a.md) and ![img](b.png \"title\").
Not `[code](c.md)`, nor ``[two ` ticks](d.md)``.
[web](https://example.com) [mail](mailto:x@y) [anchor](#here)

```sh
[fenced](e.md)
```
~~~
[tilde](f.md)
~~~
A [wrapped
link](g.md#part) and <x> [angle](<h i.md>) [nested ![i](j.png)](k.md)
An unclosed ` backtick [still](l.md)
";
    let found = links(md);
    let expected: Vec<(usize, String)> = vec![
        (1, "a.md".into()),
        (1, "b.png".into()),
        (3, "#here".into()),
        (11, "g.md#part".into()),
        (12, "h i.md".into()),
        (12, "k.md".into()),
        (12, "j.png".into()),
        (13, "l.md".into()),
    ];
    assert_eq!(found, expected);
}

#[test]
fn a_code_span_may_cross_lines_but_not_paragraphs() {
    let md = "a `span\n[in](x.md) span` b\n\nc `open\n\n[out](y.md)\n";
    assert_eq!(links(md), vec![(6, "y.md".to_string())]);
}
