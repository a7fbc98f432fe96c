//! The API's OpenAPI 3.1 document, made from the handlers' `#[utoipa::path]` attributes and
//! the types they take and answer, and served at `/openapi.json`: the routes and the document
//! come from the same list (see `routes`), so they cannot drift apart.

use super::error::ErrorBody;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

/// The route of the document itself; like `/metrics`, it needs no token.
pub const DOCUMENT: &str = "/openapi.json";

/// What the derive starts from; the paths are added by the router.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pxd",
        description = "A pxd node's REST API. JSON over the unix socket `/run/pxd/pxd.sock` \
            (its file mode guards it) and over TCP, where every route but `/metrics` and \
            `/openapi.json` needs the cluster's bearer token (`pxd cluster api-token`). \
            Every error answers `{code, message, field}` with the status of its class."
    ),
    tags(
        (name = "cluster", description = "Membership and cluster-wide settings"),
        (name = "nodes", description = "Members with liveness and stats"),
        (name = "topology", description = "Fault-domain labels"),
        (name = "drives", description = "This node's disks"),
        (name = "pools", description = "Pools and provisioning"),
        (name = "volumes", description = "Volumes: create, attach, mount, replicas, limits"),
        (name = "snapshots", description = "Snapshots, clones and restores"),
        (name = "stats", description = "Volume I/O counted on this node"),
        (name = "kv", description = "Small cluster-wide metadata"),
        (name = "metrics", description = "Prometheus text"),
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

/// The whole document: the routes' operations, each able to answer an error.
pub fn document(mut routes: OpenApi) -> OpenApi {
    utoipa::Modify::modify(&Errors, &mut routes);
    routes
}

/// Every operation can answer an error: a `default` response with the error body.
struct Errors;

impl utoipa::Modify for Errors {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components
            .schemas
            .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
        let error = ResponseBuilder::new()
            .description("The request was refused or failed; `code` names the class")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build();
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                op.responses
                    .responses
                    .insert("default".into(), error.clone().into());
            }
        }
    }
}

/// Over TCP the API wants the cluster's bearer token.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn document() -> Value {
        let (_, doc) = super::super::documented();
        serde_json::to_value(doc).unwrap()
    }

    /// Every `$ref` anywhere in `v`.
    fn refs(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.insert(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_operation_is_named_answers_json_and_can_answer_an_error() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        let mut count = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                count += 1;
                let id = op["operationId"].as_str().unwrap_or_default();
                let params: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                let in_path: Vec<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(params, in_path, "{method} {path}: path parameters");
                assert!(
                    ids.insert(id.to_owned()),
                    "{method} {path}: id {id:?} twice"
                );
                assert!(op["summary"].is_string(), "{method} {path} has no summary");
                let ok = &op["responses"]["200"]["content"];
                let want = if path == "/metrics" {
                    "text/plain"
                } else {
                    "application/json"
                };
                assert!(ok[want].is_object(), "{method} {path}: 200 is not {want}");
                assert_eq!(
                    op["responses"]["default"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path}"
                );
            }
        }
        assert_eq!(count, 44, "{ids:?}");
    }

    #[test]
    fn every_reference_resolves_and_bodies_are_described() {
        let doc = document();
        let mut found = BTreeSet::new();
        refs(&doc, &mut found);
        for r in &found {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} is not there"
            );
        }
        let create = &doc["paths"]["/v1/volumes"]["post"]["requestBody"]["content"];
        assert_eq!(
            create["application/json"]["schema"]["$ref"],
            "#/components/schemas/CreateRequest"
        );
        let view = &doc["components"]["schemas"]["VolumeView"];
        let required: BTreeSet<&str> = view["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for field in ["id", "name", "size", "phase", "stack"] {
            assert!(required.contains(field), "{field} is not required");
        }
        // Left out when empty: never required, or a volume without them would not conform.
        for field in ["raid", "usage", "build", "max_iops"] {
            assert!(!required.contains(field), "{field} is required");
        }
        let secret = &doc["components"]["schemas"]["CreateRequest"]["properties"]["secret_key"];
        assert!(secret.to_string().contains("schemas/Secret"), "{secret}");
        assert_eq!(doc["components"]["schemas"]["Secret"]["format"], "password");
    }
}
