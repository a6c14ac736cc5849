//! The connections to Redis: the data connection of either kind (one server through
//! `ConnectionManager`, a cluster through `ClusterConnection`) and the subscriber's pub/sub
//! connection. Both kinds reconnect by themselves after the first successful connect.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::{L2Config, L2Error, Target};

/// One data connection of either kind. Both are cheap, clonable handles that multiplex
/// commands and reconnect by themselves after the first successful connect.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

pub(super) async fn open_connection(config: &L2Config) -> Result<Connection, L2Error> {
    let to_error = |err: redis::RedisError| L2Error::Redis(err.to_string());
    let connect = async {
        match &config.target {
            Target::Single(node) => {
                let client = redis::Client::open((**node).clone()).map_err(to_error)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(config.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                let manager = ConnectionManager::new_with_config(client, manager_config).await.map_err(to_error)?;
                Ok(Connection::Single(manager))
            }
            Target::Cluster(nodes) => {
                let client = redis::cluster::ClusterClient::builder(nodes.clone())
                    .connection_timeout(config.timeout.max(Duration::from_millis(500)))
                    .response_timeout(config.timeout)
                    .build()
                    .map_err(to_error)?;
                let connection = client.get_async_connection().await.map_err(to_error)?;
                Ok(Connection::Cluster(connection))
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(result) => result,
        Err(_) => Err(L2Error::Timeout),
    }
}

/// A pub/sub connection for the subscriber task: to the server, or to the first cluster seed
/// node that answers (a cluster relays every published message to every node).
///
/// # Errors
/// When no node can be reached.
pub(crate) async fn open_pubsub(config: &L2Config, channel: &str) -> Result<redis::aio::PubSub, L2Error> {
    let nodes: Vec<&redis::ConnectionInfo> = match &config.target {
        Target::Single(node) => vec![node],
        Target::Cluster(nodes) => nodes.iter().collect(),
    };
    let mut last_error = L2Error::NotConnected;
    for node in nodes {
        let subscribe = async {
            let client = redis::Client::open((*node).clone())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(5), subscribe).await {
            Ok(Ok(pubsub)) => return Ok(pubsub),
            Ok(Err(err)) => last_error = L2Error::Redis(err.to_string()),
            Err(_) => last_error = L2Error::Timeout,
        }
    }
    Err(last_error)
}
