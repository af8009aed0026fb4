"""Plain helpers every layer may use (imports nothing else of the package): exact array
and generator encodings, dataclass configs to and from dicts and TOML."""
