//! The processes under test: durable Redis behind the fault proxy, the origin, two instances.

use super::*;

pub(super) struct Cluster {
    pub(super) redis: RedisServer,
    pub(super) proxy: FaultProxy,
    pub(super) origin: TestOrigin,
    pub(super) instances: [Option<ServiceProcess>; 2],
    pub(super) ports: [u16; 2],
    pub(super) envs: [Vec<(String, String)>; 2],
    pub(super) logs: [PathBuf; 2],
    pub(super) _dir: tempfile::TempDir,
    /// Peak RSS (kB) of processes already stopped, per instance.
    pub(super) stopped_peak_kb: [u64; 2],
}

impl Cluster {
    pub(super) async fn start() -> Cluster {
        // Durable: a SIGKILL must not lose an acknowledged write.
        let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
        let proxy = FaultProxy::start(redis.port).await;
        let origin = TestOrigin::start().await;
        origin.set_default(Reply {
            delay: Duration::from_millis(20),
            cache_control: Some(format!("max-age={ORIGIN_MAX_AGE_SECS}")),
            ..Reply::default()
        });
        for key in 0..WRITE_KEYS {
            // Written keys are not the origin's: a miss is a miss.
            origin.set(&format!("w:{key}"), Reply::status(404));
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let ports = [crate::harness::free_port(), crate::harness::free_port()];
        let env = |idx: usize| -> Vec<(String, String)> {
            [
                ("TIERCACHE__SERVER__INSTANCE_ID", format!("chaos-{idx}")),
                ("TIERCACHE__L2__URL", proxy.redis_url()),
                ("TIERCACHE__L2__TIMEOUT_MS", L2_TIMEOUT_MS.to_string()),
                ("TIERCACHE__L1__MAX_TTL_SECS", L1_MAX_TTL_SECS.to_string()),
                ("TIERCACHE__L1__MAX_BYTES", L1_MAX_BYTES.to_string()),
                ("TIERCACHE__L1__MAX_ENTRIES", "100000".to_string()),
                ("TIERCACHE__CACHE__GRACE_SECS", GRACE_SECS.to_string()),
                ("TIERCACHE__ORIGIN__URL", origin.url()),
                ("TIERCACHE__ORIGIN__TIMEOUT_MS", "1000".to_string()),
                (
                    "TIERCACHE__PERSISTENCE__PATH",
                    dir.path().join(format!("chaos-{idx}.snapshot")).display().to_string(),
                ),
                ("TIERCACHE__LOG__LEVEL", "info".to_string()),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .chain(extra_env())
            .collect()
        };
        let envs = [env(0), env(1)];
        let logs = [dir.path().join("chaos-0.log"), dir.path().join("chaos-1.log")];
        let mut cluster = Cluster {
            redis,
            proxy,
            origin,
            instances: [None, None],
            ports,
            envs,
            logs,
            _dir: dir,
            stopped_peak_kb: [0, 0],
        };
        for idx in 0..2 {
            cluster.start_instance(idx).await;
        }
        cluster
    }

    pub(super) async fn start_instance(&mut self, idx: usize) {
        let env: Vec<(&str, &str)> =
            self.envs[idx].iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        self.instances[idx] = Some(ServiceProcess::start_on(self.ports[idx], &env, Some(&self.logs[idx])).await);
    }

    pub(super) fn base(&self, idx: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[idx])
    }

    pub(super) fn peak_rss_kb(&self, idx: usize) -> u64 {
        let live = self.instances[idx].as_ref().map_or(0, |process| peak_rss_kb(process.pid()));
        live.max(self.stopped_peak_kb[idx])
    }

    pub(super) fn log(&self, idx: usize) -> String {
        std::fs::read_to_string(&self.logs[idx]).unwrap_or_default()
    }
}
