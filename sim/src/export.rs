//! Writes a scenario's data as files, so the same federation can run as separate
//! processes: one `fedval-server` and one `fedval-client` per node.
//!
//! `DIR/client-XX.csv` (each node's local data), `DIR/validation.csv` (the server's),
//! `DIR/test.csv`, and `DIR/server.toml`, a server settings file whose federation
//! `demo` reads `validation.csv`. CSV rows are the features then the integer label, no
//! header: the format `fedval_core::data::load_csv` reads.

use std::path::{Path, PathBuf};

use fedval_core::data::to_csv;
use fedval_server::config::FederationConfig;

use crate::SimError;
use crate::runner::federation_config;
use crate::scenario::SimConfig;
use crate::setup::prepare;

/// Id of the exported federation.
pub const EXPORT_FEDERATION: &str = "demo";
/// Enrollment secret of the exported federation.
pub const EXPORT_SECRET: &str = "demo-secret";

/// Writes the scenario's files into `dir` (created if needed); returns the paths written.
pub fn export(config: &SimConfig, dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let prepared = prepare(config)?;
    std::fs::create_dir_all(dir).map_err(|e| SimError::Output {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let mut written = Vec::new();
    let mut put = |name: &str, text: String| -> Result<(), SimError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| SimError::Output {
            path: path.clone(),
            source: e,
        })?;
        written.push(path);
        Ok(())
    };
    for plan in &prepared.clients {
        put(&format!("{}.csv", plan.name), to_csv(&plan.data))?;
    }
    put("validation.csv", to_csv(&prepared.validation))?;
    put("test.csv", to_csv(&prepared.test))?;

    let wire = federation_config(EXPORT_FEDERATION, EXPORT_SECRET, config, &prepared);
    let mut federation =
        FederationConfig::try_from(wire).map_err(|e| SimError::Config(e.to_string()))?;
    federation.validation = None;
    let mut entry = toml::Table::try_from(&federation)
        .map_err(|e| SimError::Config(format!("federation config as TOML: {e}")))?;
    entry.insert(
        "validation_csv".into(),
        toml::Value::String("validation.csv".into()),
    );
    let mut file = toml::Table::new();
    file.insert(
        "listen".into(),
        toml::Value::String("127.0.0.1:50051".into()),
    );
    file.insert("data_dir".into(), toml::Value::String("fedval-data".into()));
    file.insert(
        "federations".into(),
        toml::Value::Array(vec![toml::Value::Table(entry)]),
    );
    let text = toml::to_string(&file).map_err(|e| SimError::Config(format!("server.toml: {e}")))?;
    put(
        "server.toml",
        format!(
            "# fedval-server settings written by `fedval-sim --export-csv`.\n\
             # Start with: fedval-server --config server.toml --admin-token <token>\n{text}"
        ),
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedval_server::config::load_server_file;

    #[test]
    fn exported_files_load_back_as_the_same_federation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SimConfig {
            clients: 3,
            noisy: 1,
            tiny: 0,
            ..SimConfig::default()
        };
        let written = export(&config, dir.path()).expect("export");
        assert_eq!(written.len(), 3 + 3);
        let prepared = prepare(&config).expect("prepare");
        let settings =
            load_server_file(&dir.path().join("server.toml")).expect("server.toml parses");
        let federations = settings.resolve_federations().expect("federation resolves");
        assert_eq!(federations.len(), 1);
        let federation = &federations[0];
        assert_eq!(federation.id, EXPORT_FEDERATION);
        assert_eq!(federation.min_clients, 3);
        let validation = federation
            .validation
            .as_ref()
            .expect("validation loaded from CSV");
        assert_eq!(validation.labels, prepared.validation.labels);
        let expected: Vec<f32> = prepared.validation.features.iter().copied().collect();
        assert_eq!(
            validation.features, expected,
            "features survive the CSV round trip exactly"
        );
        for plan in &prepared.clients {
            let local = fedval_core::data::load_csv(&dir.path().join(format!("{}.csv", plan.name)))
                .expect("client CSV loads");
            assert_eq!(local.labels, plan.data.labels);
        }
    }
}
