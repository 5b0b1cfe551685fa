//! The program lists of `[permissions]` (`exec`, `spawn`): how they are
//! written, checked, and matched against the program a hook asks for.

use serde::Serialize;
use toml::Spanned;

use super::ManifestError;
use super::parse::Ctx;

/// A list of program patterns: bare names (looked up in the gear's PATH) or
/// absolute paths, where `*` matches within one path segment and a lone `*`
/// matches every program.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProgramList(Vec<String>);

impl ProgramList {
    /// The patterns, as written.
    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    /// Whether `program` (as a hook asked for it) is allowed.
    ///
    /// A bare name only matches bare-name patterns and an absolute path only
    /// matches absolute patterns, so `python3` in the list never lets a hook
    /// run `/gear/app/python3`. Paths containing `.` or `..` segments never
    /// match.
    pub fn allows(&self, program: &str) -> bool {
        if program.is_empty() || program.contains('\0') {
            return false;
        }
        let absolute = program.starts_with('/');
        if absolute && !is_normal_absolute(program) {
            return false;
        }
        if !absolute && program.contains('/') {
            return false;
        }
        self.0.iter().any(|pattern| {
            pattern == "*"
                || (pattern.starts_with('/') == absolute && glob_path_matches(pattern, program))
        })
    }
}

fn is_normal_absolute(path: &str) -> bool {
    path.len() > 1
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// `*` matches any run of characters other than `/`.
fn glob_path_matches(pattern: &str, candidate: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let cand: Vec<&str> = candidate.split('/').collect();
    pat.len() == cand.len() && pat.iter().zip(&cand).all(|(p, c)| glob_segment(p, c))
}

fn glob_segment(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    if !text.starts_with(head) {
        return false;
    }
    let text = &text[head.len()..];
    (0..=text.len())
        .filter(|i| text.is_char_boundary(*i))
        .any(|i| glob_segment(rest, &text[i..]))
}
pub(super) fn resolve_programs(
    ctx: &Ctx<'_>,
    field: &str,
    raw: &[Spanned<String>],
) -> Result<ProgramList, ManifestError> {
    let mut out = Vec::new();
    for (i, entry) in raw.iter().enumerate() {
        let value = entry.get_ref();
        let problem = if value.is_empty() {
            Some("an empty program name".to_string())
        } else if value == "*" {
            None
        } else if value.starts_with('/') {
            (!is_normal_absolute(value)).then(|| {
                format!(
                    "{value:?} is not a clean absolute path (no `.`, `..`, `//` or trailing `/`)"
                )
            })
        } else if value.contains('/') {
            Some(format!(
                "{value:?} is a relative path; hooks cannot be allowed to run programs by relative path"
            ))
        } else {
            value
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "._+-*".contains(*c)))
                .map(|c| format!("{value:?} contains {c:?}"))
        };
        if let Some(problem) = problem {
            return ctx.err(
                format!("{field}[{i}]"),
                Some(entry.span()),
                problem,
                "list bare program names (looked up in the gear's PATH, e.g. \"python3\") or \
                 absolute paths (e.g. \"/usr/bin/python3\"); `*` matches within one path segment",
            );
        }
        out.push(value.clone());
    }
    Ok(ProgramList(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_patterns_do_not_cross_kinds() {
        let list = ProgramList(vec![
            "python3".into(),
            "/usr/lib/postgresql/*/bin/pg_ctl".into(),
        ]);
        assert!(list.allows("python3"));
        assert!(!list.allows("/gear/app/python3"));
        assert!(!list.allows("./python3"));
        assert!(!list.allows("bin/python3"));
        assert!(list.allows("/usr/lib/postgresql/15/bin/pg_ctl"));
        assert!(!list.allows("/usr/lib/postgresql/15/x/bin/pg_ctl"));
        assert!(!list.allows("/usr/lib/postgresql/../../../bin/pg_ctl"));
        assert!(!list.allows(""));
        let any = ProgramList(vec!["*".into()]);
        assert!(any.allows("anything"));
        assert!(any.allows("/usr/bin/x"));
        assert!(!any.allows("/usr/../bin/x"));
    }
}
