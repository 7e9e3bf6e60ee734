//! `/graphql`: `registerConnector` and `pingConnector` as the platform answers them
//! (docs/opencti-protocol.md#state-storage), with the stored `connector_state` and the "reset
//! requested" switch.

use serde_json::{Value, json};

use super::{Shared, lock};

/// One GraphQL call the simulator received.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphqlCall {
    /// `registerConnector`, `pingConnector`, or the text `unknown`.
    pub operation: String,
    /// The request's `variables`.
    pub variables: Value,
    /// A valid token was given.
    pub authorized: bool,
}

/// The platform side of the connector state.
#[derive(Debug, Default)]
pub struct ConnectorState {
    /// `connector_state` as stored (a JSON string, `""` after a reset, `None` never set).
    pub state: Option<String>,
    /// A reset was requested: the next ping clears this flag and answers `""`.
    pub reset_requested: bool,
    /// Every call, in order.
    pub calls: Vec<GraphqlCall>,
}

const CONNECTOR_USER_ID: &str = "88ec0c6a-13ce-5e39-b486-354fe4a7084f";

/// Answers one GraphQL request body; returns the HTTP status and the JSON answer.
pub fn handle(shared: &Shared, body: &[u8], authorized: bool) -> (u16, Vec<u8>) {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            let answer = json!({"errors": [{"message": format!("Invalid JSON body: {error}")}]});
            return (400, answer.to_string().into_bytes());
        }
    };
    let query = request
        .get("query")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let variables = request.get("variables").cloned().unwrap_or(Value::Null);
    let operation = if query.contains("registerConnector") {
        "registerConnector"
    } else if query.contains("pingConnector") {
        "pingConnector"
    } else {
        "unknown"
    };
    let mut state = lock(&shared.connector);
    state.calls.push(GraphqlCall {
        operation: operation.to_owned(),
        variables: variables.clone(),
        authorized,
    });
    if !authorized {
        let answer = json!({
            "errors": [{"message": "You must be logged in to do this.", "extensions": {"code": "AUTH_REQUIRED"}}],
            "data": null
        });
        return (200, answer.to_string().into_bytes());
    }
    let answer = match operation {
        "registerConnector" => {
            let id = variables
                .pointer("/input/id")
                .cloned()
                .unwrap_or(Value::Null);
            let id_text = id.as_str().unwrap_or("connector").to_owned();
            json!({"data": {"registerConnector": {
                "id": id,
                "connector_state": state.state,
                "config": {
                    "connection": {"host": "rabbitmq", "vhost": "/", "use_ssl": false, "port": 5672,
                                   "user": "opencti", "pass": "simulated"},
                    "listen": format!("listen_{id_text}"),
                    "listen_routing": format!("listen_routing_{id_text}"),
                    "listen_exchange": "amqp.connector.exchange",
                    "push": format!("push_{id_text}"),
                    "push_routing": format!("push_routing_{id_text}"),
                    "push_exchange": "amqp.worker.exchange"
                },
                "connector_user_id": CONNECTOR_USER_ID
            }}})
        }
        "pingConnector" => {
            if state.reset_requested {
                state.reset_requested = false;
                state.state = Some(String::new());
            } else if let Some(new_state) = variables.get("state") {
                state.state = new_state.as_str().map(str::to_owned);
            }
            json!({"data": {"pingConnector": {
                "id": variables.get("id").cloned().unwrap_or(Value::Null),
                "connector_state": state.state,
                "connector_info": variables.get("connectorInfo").cloned().unwrap_or(Value::Null)
            }}})
        }
        _ => {
            json!({"errors": [{"message": "Unsupported operation: the simulator answers registerConnector and pingConnector"}]})
        }
    };
    (200, answer.to_string().into_bytes())
}
