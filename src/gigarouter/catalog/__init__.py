"""The catalog: model cards as data (one TOML file per model) and what is deployed."""
