//! `.gearignore`: what `gear deploy` leaves out of the sources it sends.
//!
//! The file sits at the top of the directory being deployed, one pattern a
//! line; blank lines and lines starting with `#` are skipped. A pattern
//! without a `/` matches an entry's name anywhere in the tree; one with a
//! `/` (a leading one included) matches the path from the top. `*` matches
//! any run of characters within a name, `?` one character. A trailing `/`
//! matches directories only, and `!` before a pattern takes an entry back.
//! The last pattern that matches an entry decides; a directory left out
//! takes everything in it along. `.git` is left out unless a pattern takes
//! it back (`!.git`).

use std::path::Path;

/// The file's name.
pub const FILE: &str = ".gearignore";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Components to match, from the top (`anchored`) or against the name.
    parts: Vec<String>,
    anchored: bool,
    dirs_only: bool,
    keep: bool,
}

/// The rules of one `.gearignore`, with the built-in `.git` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    /// The rules in `text`, after the built-in ones.
    pub fn parse(text: &str) -> Ignore {
        let mut rules = vec![Rule {
            parts: vec![".git".into()],
            anchored: false,
            dirs_only: false,
            keep: false,
        }];
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keep, line) = match line.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let (dirs_only, line) = match line.strip_suffix('/') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let anchored = line.contains('/');
            let parts: Vec<String> = line
                .trim_start_matches('/')
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if parts.is_empty() {
                continue;
            }
            rules.push(Rule {
                parts,
                anchored,
                dirs_only,
                keep,
            });
        }
        Ignore { rules }
    }

    /// The rules of `root/.gearignore`, or the built-in ones alone.
    pub fn of(root: &Path) -> std::io::Result<Ignore> {
        match std::fs::read_to_string(root.join(FILE)) {
            Ok(text) => Ok(Ignore::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ignore::parse("")),
            Err(e) => Err(e),
        }
    }

    /// Whether the entry at `rel` (relative to the top) is left out.
    pub fn skips(&self, rel: &Path, is_dir: bool) -> bool {
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let mut skip = false;
        for rule in &self.rules {
            if rule.dirs_only && !is_dir {
                continue;
            }
            let hit = if rule.anchored {
                rule.parts.len() == parts.len()
                    && rule.parts.iter().zip(&parts).all(|(p, s)| glob(p, s))
            } else {
                rule.parts.len() == 1 && parts.last().is_some_and(|name| glob(&rule.parts[0], name))
            };
            if hit {
                skip = !rule.keep;
            }
        }
        skip
    }
}

/// Whether `name` matches `pattern` (`*` any run, `?` one character).
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // the classic two-pointer match with one backtrack point
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_paths_directories_and_take_backs() {
        let ig = Ignore::parse(
            "# build output\n*.pyc\n/build/\nnode_modules/\ndocs/*.tmp\n!keep.pyc\n\n",
        );
        let skips = |p: &str, dir: bool| ig.skips(Path::new(p), dir);
        assert!(skips(".git", true), "built in");
        assert!(skips("app/.git", true));
        assert!(skips("a/b/c.pyc", false));
        assert!(!skips("a/b/keep.pyc", false), "taken back");
        assert!(skips("build", true));
        assert!(
            !skips("build", false),
            "a file named build is not a directory"
        );
        assert!(!skips("src/build", true), "anchored at the top");
        assert!(skips("web/node_modules", true));
        assert!(skips("docs/x.tmp", false));
        assert!(!skips("docs/sub/x.tmp", false));
        assert!(!skips("app.py", false));
        let back = Ignore::parse("!.git\n");
        assert!(!back.skips(Path::new(".git"), true));
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*.tar.*", "x.tar.gz"));
        assert!(!glob("*.py", "x.pyc"));
    }
}
