//! The servers' tracing setup: human-readable lines on standard error
//! (colours only on a terminal), filtered by an `EnvFilter` directive
//! string taken from each binary's `log` setting.

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The filter is not valid `EnvFilter` syntax.
    #[error("log filter {filter:?}: {source}")]
    Filter {
        /// The filter.
        filter: String,
        /// Cause.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("tracing is already set up")]
    AlreadySet,
}

/// Installs the global subscriber with `filter` (e.g.
/// `info,sqlx=warn`).
pub fn init_tracing(filter: &str) -> Result<(), TracingError> {
    let env_filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|source| TracingError::Filter {
            filter: filter.to_owned(),
            source,
        })?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(env_filter)
        .try_init()
        .map_err(|_| TracingError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_by_name() {
        let error = init_tracing("info,=[").unwrap_err().to_string();
        assert!(error.contains("log filter"), "{error}");
    }
}
