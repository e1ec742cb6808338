//! Shell completions of the CLI: clap_complete's scripts, and for bash a
//! wrapper that completes key names from the daemon. Where the command line
//! wants a key name (the first argument of a command whose first argument
//! is `NAME`, or the value of an option whose value is `NAME`, such as
//! `--key`), it runs `hostkms list` quietly (errors discarded, so no daemon
//! or no access just means no names) with the `--socket` the line gives.
//! Everything else is clap_complete's, `--bytes 16|24|32|64` included.

/// The commands whose first positional argument is a key name (`NAME`), and
/// the options whose value is one, from the clap definition.
pub fn key_name_slots(command: &clap::Command) -> (Vec<String>, Vec<String>) {
    let mut commands = Vec::new();
    let mut options = Vec::new();
    // Nested commands (`credential encrypt --key NAME`) count too.
    let nested = command
        .get_subcommands()
        .flat_map(clap::Command::get_subcommands);
    for sub in command.get_subcommands().chain(nested) {
        let first = sub.get_positionals().next();
        if first.is_some_and(|arg| arg.get_id() == "name") {
            commands.push(sub.get_name().to_string());
        }
        for arg in sub.get_opts() {
            let names_a_key = arg
                .get_value_names()
                .is_some_and(|names| names.iter().any(|n| n == "NAME"));
            if let (true, Some(long)) = (names_a_key, arg.get_long()) {
                let option = format!("--{long}");
                if !options.contains(&option) {
                    options.push(option);
                }
            }
        }
    }
    (commands, options)
}

/// The bash wrapper around clap_complete's `_hostkms` function, for
/// `program`: key names where `command` wants one, clap's completion
/// elsewhere. Appended to the generated script, it replaces its `complete`.
pub fn bash_key_names(program: &str, command: &clap::Command) -> String {
    let (commands, options) = key_name_slots(command);
    let function = format!("_{}", program.replace('-', "__"));
    format!(
        r#"
# Key names from the daemon where a key name goes: the first argument of
# {commands_list}, and the value of {options_list}. `{program} list` runs
# quietly: without a daemon, or without access, there are just no names.
{function}_key_names() {{
    local socket=() i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --socket) socket=(--socket "${{COMP_WORDS[i+1]}}") ;;
            --socket=*) socket=("${{COMP_WORDS[i]}}") ;;
        esac
    done
    command {program} "${{socket[@]}}" list 2>/dev/null | while IFS=$' \t' read -r name _; do
        printf '%s\n' "$name"
    done
}}

{function}_with_key_names() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local sub="" at=0 i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --socket|--max-frame) ((i++)) ;;
            -*) ;;
            *) sub=${{COMP_WORDS[i]}}; at=$i; break ;;
        esac
    done
    local wants_key=0
    case " {options} " in *" $prev "*) wants_key=1 ;; esac
    if [[ -n $sub && $COMP_CWORD -eq $((at + 1)) && $cur != -* ]]; then
        case " {commands} " in *" $sub "*) wants_key=1 ;; esac
    fi
    if ((wants_key)); then
        local IFS=$'\n'
        COMPREPLY=($(compgen -W "$({function}_key_names)" -- "$cur"))
        return 0
    fi
    {function} "$@"
}}

complete -F {function}_with_key_names -o nosort -o bashdefault -o default {program}
"#,
        commands_list = commands.join(", "),
        options_list = options.join(", "),
        commands = commands.join(" "),
        options = options.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn script() -> String {
        let mut command = hostkms_cli::command().name("hostkms").bin_name("hostkms");
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut command,
            "hostkms",
            &mut out,
        );
        let mut text = String::from_utf8(out).expect("UTF-8");
        text.push_str(&bash_key_names("hostkms", &hostkms_cli::command()));
        text
    }

    #[test]
    fn key_name_slots_come_from_the_clap_definition() {
        let (commands, options) = key_name_slots(&hostkms_cli::command());
        for name in [
            "describe",
            "wrap",
            "datakey",
            "revoke",
            "sign",
            "export",
            "schedule-deletion",
            "cancel-deletion",
            "set-rotation-period",
            "set-metadata",
            "encrypt-file",
            "age-recipient",
        ] {
            assert!(commands.iter().any(|c| c == name), "{name}: {commands:?}");
        }
        for name in [
            "unwrap",
            "random",
            "list",
            "import",
            "decrypt-file",
            "age-identity",
        ] {
            assert!(!commands.iter().any(|c| c == name), "{name}: {commands:?}");
        }
        for option in ["--key", "--to-key"] {
            assert!(options.iter().any(|o| o == option), "{options:?}");
        }
        // A tag's name is no key's.
        assert!(!options.iter().any(|o| o == "--remove-tag"), "{options:?}");
    }

    /// Completes `words` (the cursor on the last one) in bash with the
    /// script, a fake `hostkms` on PATH answering `list` with two keys and
    /// recording its arguments.
    fn complete(words: &[&str]) -> (Vec<String>, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("hostkms");
        let log = dir.path().join("args");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\necho 'app-db    enabled   aes256-gcm  v1  00'\n\
                 echo 'backups   enabled   aes256-gcm  v2  11'\necho 'noise' >&2\n",
                log.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script_path = dir.path().join("hostkms.bash");
        std::fs::write(&script_path, script()).expect("write");
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let line = format!(
            "source '{}'; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
             _hostkms_with_key_names hostkms '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script_path.display(),
            quoted.join(" "),
            words.len() - 1,
            words.join(" "),
            words.last().unwrap_or(&""),
            words.get(words.len().saturating_sub(2)).unwrap_or(&""),
        );
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let output = Command::new("bash")
            .args(["-c", &line])
            .env("PATH", path)
            .output()
            .expect("run bash");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let words = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        (words, std::fs::read_to_string(&log).unwrap_or_default())
    }

    #[test]
    fn bash_completes_key_names_from_hostkms_list() {
        let (words, asked) = complete(&["hostkms", "describe", ""]);
        assert_eq!(words, ["app-db", "backups"]);
        assert_eq!(asked.trim(), "list");
        let (words, asked) = complete(&["hostkms", "--socket", "/run/x.sock", "wrap", "ba"]);
        assert_eq!(words, ["backups"]);
        assert_eq!(asked.trim(), "--socket /run/x.sock list");
        let (words, _) = complete(&["hostkms", "unwrap", "--key", ""]);
        assert_eq!(words, ["app-db", "backups"]);
        let (words, _) = complete(&["hostkms", "schedule-deletion", "ap"]);
        assert_eq!(words, ["app-db"]);
        let (words, _) = complete(&["hostkms", "credential", "encrypt", "--key", ""]);
        assert_eq!(words, ["app-db", "backups"]);
        let (words, _) = complete(&["hostkms", "rewrap", "--to-key", ""]);
        assert_eq!(words, ["app-db", "backups"]);
    }

    #[test]
    fn bash_completes_the_rest_as_clap_does() {
        let (words, asked) = complete(&["hostkms", "datakey", "k", "--bytes", ""]);
        assert_eq!(words, ["16", "24", "32", "64"]);
        assert!(asked.is_empty(), "no daemon asked: {asked}");
        let (words, asked) = complete(&["hostkms", "desc"]);
        assert_eq!(words, ["describe"]);
        assert!(asked.is_empty(), "no daemon asked: {asked}");
    }
}
