//! A live volume's I/O limits (`volume update --max_iops/--max_bandwidth`).
//!
//! | route | does |
//! |---|---|
//! | `PUT /v1/volumes/{vol}/limits` `{max_iops?, max_bandwidth?}` | set (`R,W`, one value, `max` on a side) or remove (`none`) a limit; one absent stays |
//!
//! The node the volume's device is on holds the limit for the volume as a whole within a
//! second (see [`crate::io::limits`]).

use super::attach::submit;
use super::volumes::{bad, find, inspect, VolumeView};
use super::{ApiResult, AppState, JsonBody, Path};
use crate::store::state::VolumeChange;
use crate::volume::limits::{parse_change, BandwidthLimit, IopsLimit};
use axum::extract::State;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// `R,W` IOPS, one value for both, `max` for none one way, or `none` to remove it.
    #[serde(default)]
    pub max_iops: Option<String>,
    /// `R,W` bytes a second (`4M`), one value for both, `max` one way, or `none`.
    #[serde(default)]
    pub max_bandwidth: Option<String>,
}

/// `PUT /v1/volumes/{vol}/limits`.
#[utoipa::path(
    put,
    path = "/v1/volumes/{vol}/limits",
    operation_id = "volume_set_limits",
    tag = "volumes",
    summary = "Change a live volume's IOPS and bandwidth limits",
    params(("vol" = String, Path, description = "The volume's name or id")),
    request_body = LimitsRequest,
    responses((status = 200, description = "The volume as it is now", body = VolumeView))
)]
pub async fn set(
    State(s): State<AppState>,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<LimitsRequest>,
) -> ApiResult<VolumeView> {
    if req.max_iops.is_none() && req.max_bandwidth.is_none() {
        return Err(bad(
            "limits: give max_iops, max_bandwidth or both (none removes one)",
        ));
    }
    let max_iops = req
        .max_iops
        .as_deref()
        .map(parse_change::<IopsLimit>)
        .transpose()
        .map_err(bad)?;
    let max_bandwidth = req
        .max_bandwidth
        .as_deref()
        .map(parse_change::<BandwidthLimit>)
        .transpose()
        .map_err(bad)?;
    let v = s.cluster.state().read(|st| find(st, &key))?;
    let change = VolumeChange::Limits {
        max_iops: max_iops.unwrap_or(v.max_iops),
        max_bandwidth: max_bandwidth.unwrap_or(v.max_bandwidth),
    };
    submit(&s, &v, change).await?;
    inspect(State(s), Path(v.id)).await
}
