//! What a user may write: `sink.options()` lists every connector's options (from
//! the connector registry, so a new connector appears without an edit here) and the
//! sink-level options every connector shares.

use pgrx::prelude::*;

use crate::engine::connector::registry::REGISTRY;
use crate::engine::options::SINK_OPTIONS;

/// One row per option: its connector (NULL for the options of every sink), its
/// name (`prefix.*` for a family of pass-through options), whether a sink must give
/// it, and what it means.
#[pg_extern(immutable, parallel_safe)]
fn options(
) -> TableIterator<'static, (name!(connector, Option<String>), name!(option, String), name!(required, bool), name!(description, Option<String>))> {
    let mut rows: Vec<(Option<String>, String, bool, Option<String>)> =
        SINK_OPTIONS.iter().map(|(o, d)| (None, o.to_string(), false, Some(d.to_string()))).collect();
    for spec in REGISTRY {
        for (name, description) in spec.options {
            rows.push((Some(spec.name.to_string()), name.to_string(), spec.required.contains(name), Some(description.to_string())));
        }
        for prefix in spec.option_prefixes {
            rows.push((Some(spec.name.to_string()), format!("{prefix}*"), false, Some("passed through to the client".into())));
        }
    }
    TableIterator::new(rows)
}
