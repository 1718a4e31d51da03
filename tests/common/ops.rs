//! One ops.toml builder for the tests: an environment's sections as the
//! tests need them (a throwaway PostgreSQL on a port, host backups, a Compose
//! project), instead of each test file writing its own copy.

/// TOML for environments, section by section.
#[derive(Default)]
pub struct OpsToml {
    text: String,
}

impl OpsToml {
    pub fn new() -> OpsToml {
        OpsToml::default()
    }

    /// `[environments.NAME]` with the given `key = value` lines.
    pub fn env(mut self, name: &str, lines: &[&str]) -> OpsToml {
        self.text.push_str(&format!("[environments.{name}]\n"));
        for l in lines {
            self.text.push_str(l);
            self.text.push('\n');
        }
        self
    }

    /// The `pacetracer` database of a throwaway server on 127.0.0.1:`port`,
    /// its password in `$password_env`.
    pub fn database(mut self, name: &str, port: u16, password_env: &str) -> OpsToml {
        self.text.push_str(&format!(
            "[environments.{name}.database]\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"pacetracer\"\nname = \"pacetracer\"\npassword_env = \"{password_env}\"\n"
        ));
        self
    }

    /// `[environments.NAME.SECTION]` with the given lines (`backups`,
    /// `migrations`, `compose`, ...).
    pub fn section(mut self, name: &str, section: &str, lines: &[&str]) -> OpsToml {
        self.text
            .push_str(&format!("[environments.{name}.{section}]\n"));
        for l in lines {
            self.text.push_str(l);
            self.text.push('\n');
        }
        self
    }

    /// Free TOML appended as it is.
    pub fn raw(mut self, text: &str) -> OpsToml {
        self.text.push_str(text);
        self.text.push('\n');
        self
    }

    pub fn build(self) -> String {
        self.text
    }
}
