//! `gear completions SHELL`: the completion script clap_complete generates
//! for subcommands and flags, wrapped so that where a name belongs (a gear,
//! a cartridge, a namespace) the shell asks the running node through the
//! hidden `gear complete line` and offers the names it knows.
//!
//! clap_complete's own dynamic completion is behind its `unstable-dynamic`
//! feature, so the generated scripts are kept and wrapped: bash and zsh get
//! a function of their own that tries `gear complete line` first and falls
//! back to the generated one (renamed, for zsh); fish gets rules whose
//! condition and candidates come from the same call.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::{CmdResult, Failure};

/// Install instructions, shown by `gear completions --help`.
pub const INSTALL: &str = "\
Install:
  bash  gear completions bash > ~/.local/share/bash-completion/completions/gear
        (or for every user: sudo sh -c 'gear completions bash > /etc/bash_completion.d/gear');
        open a new shell
  zsh   gear completions zsh > ~/.zfunc/_gear, with `fpath=(~/.zfunc $fpath)` before
        `compinit` in ~/.zshrc; open a new shell
  fish  gear completions fish > ~/.config/fish/completions/gear.fish

Besides subcommands and flags, the scripts complete gear names, cartridge names
(`create --cartridge`, `cartridge remove`), namespaces (`-N`) and the actions of
`gear control GEAR` by asking the node (at --socket or GEARHOST_SOCKET); with
no node running they offer none.";

/// Arguments of `gear completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = INSTALL)]
pub struct Args {
    /// The shell: bash, zsh, fish, elvish or powershell (the last two
    /// complete subcommands and flags only).
    pub shell: Shell,
}

/// The bash wrapper: names from the node where they belong, else the
/// generated `_gear`.
const BASH: &str = r#"
# Names the node knows (gears, cartridges, namespaces) where one belongs;
# everything else from the generated _gear above.
_gear_with_names() {
    local names
    if names=$(gear complete line "$COMP_CWORD" -- "${COMP_WORDS[@]}" 2>/dev/null); then
        local IFS=$'\n'
        COMPREPLY=($names)
        compopt +o default +o bashdefault 2>/dev/null
        return 0
    fi
    _gear "$@"
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _gear_with_names -o nosort -o bashdefault -o default gear
else
    complete -F _gear_with_names -o bashdefault -o default gear
fi
"#;

/// The zsh wrapper, put in place of the generated `_gear` (renamed
/// `_gear_flags`) before the script's last lines, which call or register
/// `_gear`.
const ZSH: &str = r#"
# Names the node knows (gears, cartridges, namespaces) where one belongs;
# everything else from the generated _gear_flags above.
_gear() {
    local out
    if out=$(gear complete line $(( CURRENT - 1 )) -- "${words[@]}" 2>/dev/null); then
        local -a names
        names=(${(f)out})
        compadd -a names
        return 0
    fi
    _gear_flags "$@"
}

"#;

/// The fish rules: at a name, the condition and the candidates are the same
/// call; for the options whose values are names, rules of their own.
const FISH: &str = r#"
# Names the node knows (gears, cartridges, namespaces) where one belongs.
function __gear_line
    set -l before (commandline -opc)
    gear complete line (count $before) -- $before (commandline -ct) 2>/dev/null
end
function __gear_at_name
    __gear_line >/dev/null
end
complete -c gear -f -n __gear_at_name -a '(__gear_line)'
# fish offers an option's value from the rules naming that option only
complete -c gear -s N -l namespace -x -a '(__gear_line)'
complete -c gear -n "__fish_gear_using_subcommand create" -s c -l cartridge -x -a '(__gear_line)'
"#;

/// The script for `shell`, wrapped where the shell allows.
pub fn script(shell: Shell) -> Result<String, Failure> {
    let mut generated = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "gear", &mut generated);
    let generated = String::from_utf8(generated)
        .map_err(|e| Failure::Failed(anyhow::anyhow!("the generated script is not text: {e}")))?;
    let unexpected = |what: &str| {
        Failure::Failed(anyhow::anyhow!(
            "the {shell} script clap_complete generated has no {what}; the wrapper needs updating"
        ))
    };
    Ok(match shell {
        Shell::Bash => {
            // the generated registration goes; the wrapper's takes its place
            let start = generated
                .rfind("\nif [[ \"${BASH_VERSINFO[0]}\"")
                .ok_or_else(|| unexpected("registration at its end"))?;
            // clap_complete offers hidden subcommands in bash: not the helper
            let generated = generated[..start].replace(" completions complete ", " completions ");
            format!("{generated}\n{}", BASH.trim_start())
        }
        Shell::Zsh => {
            let tail = generated
                .rfind("\nif [ \"$funcstack[1]\" = \"_gear\" ]; then")
                .ok_or_else(|| unexpected("dispatch at its end"))?;
            let (body, tail) = generated.split_at(tail);
            if !body.contains("\n_gear() {") {
                return Err(unexpected("_gear function"));
            }
            let body = body.replacen("\n_gear() {", "\n_gear_flags() {", 1);
            format!("{body}\n{}{}", ZSH.trim_start(), tail.trim_start())
        }
        Shell::Fish => format!("{generated}{FISH}"),
        _ => generated,
    })
}

/// Run the command.
pub fn run(args: Args) -> CmdResult {
    let text = script(args.shell)?;
    print!("{text}");
    Ok(())
}
