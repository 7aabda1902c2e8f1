//! `ghostwire-backup reference` (hidden): the interface as data, read from the clap
//! definitions and the metrics registry, so that nothing describes a flag, an environment
//! variable or a metric by hand twice. `scripts/gen-docs.sh` writes its Markdown into the
//! README's marked regions (and CI fails when they are stale); `scripts/check-deploy.sh`
//! checks the manifests in `deploy/` against its JSON.
//!
//! One convention: an argument whose default is not a fixed value ends its help with
//! `(default: …)`; that text goes into the default column.

use anyhow::Result;
use clap::{Arg, ArgAction};
use serde::Serialize;

use ghostwire_backup::exit::Exit;
use ghostwire_backup::metrics::{self, Descriptor};

/// An environment variable the binary reads outside clap.
pub struct EnvOnly {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

#[derive(Serialize)]
pub struct Reference {
    binary: String,
    version: String,
    /// Flags every command takes.
    global: Vec<Flag>,
    /// Environment variables without a flag.
    environment: Vec<EnvVar>,
    commands: Vec<CommandRef>,
    metrics: Vec<Descriptor>,
}

#[derive(Serialize)]
struct CommandRef {
    name: String,
    about: String,
    args: Vec<Flag>,
}

#[derive(Serialize, PartialEq)]
struct Flag {
    /// `--repo`.
    long: String,
    env: Option<String>,
    /// The fixed default value clap applies, if any.
    default: Option<String>,
    /// A default that is not a fixed value, in words (`the pod name, HOSTNAME`).
    default_description: Option<String>,
    /// False for a switch (`--force`), true for a flag that takes a value.
    takes_value: bool,
    required: bool,
    possible_values: Vec<String>,
    help: String,
    /// The --help heading it is listed under (`Repository options`); none for a command's
    /// own flags.
    heading: Option<String>,
}

#[derive(Serialize)]
struct EnvVar {
    name: String,
    default: String,
    help: String,
}

impl Reference {
    pub fn new(cli: &clap::Command, env_only: &[EnvOnly]) -> Self {
        Self {
            binary: cli.get_name().to_owned(),
            version: cli.get_version().unwrap_or_default().to_owned(),
            global: flags(cli),
            environment: env_only
                .iter()
                .map(|e| EnvVar {
                    name: e.name.to_owned(),
                    default: e.default.to_owned(),
                    help: e.help.to_owned(),
                })
                .collect(),
            commands: cli
                .get_subcommands()
                .filter(|c| !c.is_hide_set())
                .map(|c| CommandRef {
                    name: c.get_name().to_owned(),
                    about: c.get_about().map(|s| s.to_string()).unwrap_or_default(),
                    args: flags(c),
                })
                .collect(),
            metrics: metrics::descriptors(),
        }
    }

    /// What `reference` prints: the JSON, one table (`flags`, `metrics`, `exits`), or
    /// all three tables.
    pub fn text(&self, json: bool, section: Option<&str>) -> Result<String> {
        Ok(match (json, section) {
            (true, _) => self.json()?,
            (false, Some("flags")) => self.flags_markdown(),
            (false, Some("exits")) => exits_markdown(),
            (false, Some(_)) => self.metrics_markdown(),
            (false, None) => {
                self.flags_markdown() + "\n" + &self.metrics_markdown() + "\n" + &exits_markdown()
            }
        })
    }

    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// The README's configuration table: global flags, variables without a flag, each group
    /// of flags several commands share (a --help heading such as `Repository options`) once,
    /// then each command's own flags. A command that takes all of an earlier one's flags
    /// (`run` takes `backup`'s) says so instead of repeating them.
    pub fn flags_markdown(&self) -> String {
        let mut out = String::from("| flag | env | default | |\n|---|---|---|---|\n");
        for flag in &self.global {
            out += &flag_row(flag);
        }
        for var in &self.environment {
            out += &format!(
                "| — | `{}` | `{}` | {} |\n",
                var.name,
                var.default,
                cell(&var.help)
            );
        }
        let groups = self.shared_groups();
        for (heading, flags) in &groups {
            out += &self.group_rows(heading, flags);
        }
        let shared: Vec<&String> = groups.iter().map(|(heading, _)| heading).collect();
        for i in 0..self.commands.len() {
            out += &self.command_rows(i, &shared);
        }
        out
    }

    /// A shared group's heading, the commands that take it, and its flags.
    fn group_rows(&self, heading: &String, flags: &[&Flag]) -> String {
        let takers: Vec<String> = self
            .commands
            .iter()
            .filter(|c| c.args.iter().any(|a| a.heading.as_ref() == Some(heading)))
            .map(|c| format!("**{}**", c.name))
            .collect();
        let mut out = format!(
            "| **{}** — taken by {} | | | |\n",
            cell(heading),
            takers.join(", ")
        );
        for flag in flags {
            out += &flag_row(flag);
        }
        out
    }

    /// Command `i`'s own flags under its name, less those of the largest earlier command
    /// whose own flags it all takes (`run` takes `backup`'s): it says so instead.
    fn command_rows(&self, i: usize, shared: &[&String]) -> String {
        let command = &self.commands[i];
        let args = own_flags(command, shared);
        if args.is_empty() {
            return String::new();
        }
        let includes = self.commands[..i]
            .iter()
            .map(|earlier| (earlier, own_flags(earlier, shared)))
            .filter(|(_, earlier)| !earlier.is_empty() && earlier.iter().all(|a| args.contains(a)))
            .max_by_key(|(_, earlier)| earlier.len());
        let also = includes
            .as_ref()
            .map(|(earlier, _)| format!("; takes every **{}** flag too", earlier.name))
            .unwrap_or_default();
        let mut out = format!(
            "| **{}** — {}{also} | | | |\n",
            command.name,
            cell(&command.about)
        );
        let included =
            |flag: &Flag| (includes.as_ref()).is_some_and(|(_, earlier)| earlier.contains(&flag));
        for flag in args.into_iter().filter(|flag| !included(flag)) {
            out += &flag_row(flag);
        }
        out
    }

    /// The --help headings that more than one command lists, with their flags, in the order
    /// they first appear.
    fn shared_groups(&self) -> Vec<(String, Vec<&Flag>)> {
        let mut groups: Vec<(String, Vec<&Flag>)> = Vec::new();
        for command in &self.commands {
            for flag in &command.args {
                let Some(heading) = &flag.heading else {
                    continue;
                };
                let takers = self
                    .commands
                    .iter()
                    .filter(|c| c.args.iter().any(|a| a.heading.as_ref() == Some(heading)));
                if takers.count() < 2 {
                    continue;
                }
                match groups.iter_mut().find(|(h, _)| h == heading) {
                    Some((_, flags)) if !flags.contains(&flag) => flags.push(flag),
                    Some(_) => {}
                    None => groups.push((heading.clone(), vec![flag])),
                }
            }
        }
        groups
    }

    /// The README's metric list.
    pub fn metrics_markdown(&self) -> String {
        let mut out = String::from("| metric | type | |\n|---|---|---|\n");
        for metric in &self.metrics {
            let series: Vec<String> = metric.series.iter().map(|s| format!("`{s}`")).collect();
            out += &format!(
                "| {} | {} | {} |\n",
                series.join(", "),
                metric.kind,
                cell(metric.help.trim_end_matches('.'))
            );
        }
        out
    }
}

/// The README's exit-code table, from [`Exit::TABLE`]: the codes a script may rely on.
pub fn exits_markdown() -> String {
    let mut out = String::from("| exit | when |\n|---|---|\n");
    for (exit, when) in Exit::TABLE {
        out += &format!("| {} | {} |\n", exit.code(), cell(when));
    }
    out
}

fn flags(command: &clap::Command) -> Vec<Flag> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
        .filter(|a| !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .map(flag)
        .collect()
}

fn flag(arg: &Arg) -> Flag {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|s| s.to_string())
        .unwrap_or_default()
        .replace('\n', " ");
    let (help, default_description) = match help
        .strip_suffix(')')
        .and_then(|h| h.rsplit_once(" (default: "))
    {
        Some((help, words)) => (help.to_owned(), Some(words.to_owned())),
        None => (help, None),
    };
    let default =
        (!arg.is_hide_default_value_set() && !arg.get_default_values().is_empty()).then(|| {
            let values: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            values.join(",")
        });
    Flag {
        long: format!("--{}", arg.get_long().expect("filtered on long names")),
        env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
        default,
        default_description,
        takes_value: arg.get_action().takes_values(),
        required: arg.is_required_set(),
        possible_values: arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_owned())
            .collect(),
        help,
        heading: arg.get_help_heading().map(str::to_owned),
    }
}

/// A command's flags outside the `shared` groups.
fn own_flags<'a>(command: &'a CommandRef, shared: &[&String]) -> Vec<&'a Flag> {
    (command.args.iter())
        .filter(|f| !f.heading.as_ref().is_some_and(|h| shared.contains(&h)))
        .collect()
}

fn flag_row(flag: &Flag) -> String {
    let default = match (&flag.default, &flag.default_description) {
        (_, Some(words)) => cell(words),
        _ if !flag.takes_value => "off".to_owned(),
        (Some(value), None) => format!("`{value}`"),
        (None, None) if flag.required => "required".to_owned(),
        (None, None) => "—".to_owned(),
    };
    let mut help = cell(&flag.help);
    // Values the help text does not already name (and not a bool's true/false).
    let unnamed = flag
        .possible_values
        .iter()
        .any(|v| !help.contains(v.as_str()) && v != "true" && v != "false");
    if flag.takes_value && unnamed {
        let values: Vec<String> = flag
            .possible_values
            .iter()
            .map(|v| format!("`{v}`"))
            .collect();
        help += &format!(" (one of {})", values.join(", "));
    }
    let env = flag
        .env
        .as_ref()
        .map(|e| format!("`{e}`"))
        .unwrap_or_else(|| "—".to_owned());
    format!("| `{}` | {env} | {default} | {help} |\n", flag.long)
}

/// Text for a Markdown table cell: `|` would end the cell, and `<…>` outside code spans
/// would be read as HTML.
fn cell(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            let part = part.replace('|', "\\|");
            if i % 2 == 1 {
                part
            } else {
                part.replace('<', "&lt;").replace('>', "&gt;")
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand};

    #[derive(Parser)]
    struct Cli {
        /// Where the repository is.
        #[arg(long, env = "T_REPO", default_value = "./backups", global = true)]
        repo: String,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Copy things.
        Copy(CopyArgs),
        /// Copy things, forever.
        Daemon {
            #[command(flatten)]
            copy: CopyArgs,
            /// Seconds between copies.
            #[arg(long, env = "T_EVERY", default_value_t = 60, help_heading = "Timing")]
            every: u64,
        },
        /// List things.
        Ls {
            #[command(flatten)]
            remote: RemoteArgs,
        },
        /// Not for users.
        #[command(hide = true)]
        Secret {
            #[arg(long)]
            json: bool,
        },
    }

    #[derive(clap::Args)]
    struct RemoteArgs {
        /// Where the things are.
        #[arg(long, env = "T_HOST", help_heading = "Remote options")]
        host: Option<String>,
    }

    #[derive(clap::Args)]
    struct CopyArgs {
        #[command(flatten)]
        remote: RemoteArgs,
        /// Who owns the copy, UID:GID (default: yours).
        #[arg(long, env = "T_OWNER")]
        owner: Option<String>,
        /// Copy over existing <files> | dirs.
        #[arg(long, env = "T_FORCE")]
        force: bool,
    }

    fn reference() -> Reference {
        Reference::new(
            &Cli::command(),
            &[EnvOnly {
                name: "T_LOG",
                default: "info",
                help: "Log filter",
            }],
        )
    }

    #[test]
    fn the_table_has_flag_env_default_and_help_and_lists_shared_groups_once() {
        let table = reference().flags_markdown();
        let expected = "\
| flag | env | default | |
|---|---|---|---|
| `--repo` | `T_REPO` | `./backups` | Where the repository is |
| — | `T_LOG` | `info` | Log filter |
| **Remote options** — taken by **copy**, **daemon**, **ls** | | | |
| `--host` | `T_HOST` | — | Where the things are |
| **copy** — Copy things | | | |
| `--owner` | `T_OWNER` | yours | Who owns the copy, UID:GID |
| `--force` | `T_FORCE` | off | Copy over existing &lt;files&gt; \\| dirs |
| **daemon** — Copy things, forever; takes every **copy** flag too | | | |
| `--every` | `T_EVERY` | `60` | Seconds between copies |
";
        assert_eq!(table, expected);
    }

    #[test]
    fn json_lists_every_env_var_of_every_command() {
        let json: serde_json::Value = serde_json::from_str(&reference().json().unwrap()).unwrap();
        let daemon = &json["commands"][1];
        assert_eq!(daemon["name"], "daemon");
        let envs: Vec<&str> = daemon["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["env"].as_str().unwrap())
            .collect();
        assert_eq!(envs, ["T_HOST", "T_OWNER", "T_FORCE", "T_EVERY"]);
        assert_eq!(json["global"][0]["env"], "T_REPO");
        assert_eq!(
            json["commands"].as_array().unwrap().len(),
            3,
            "hidden commands are left out"
        );
        assert!(!json["metrics"].as_array().unwrap().is_empty());
    }
}
