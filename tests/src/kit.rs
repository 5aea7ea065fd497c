//! A real kube-apiserver from the Kubernetes test kit (`../shared/k8s`, named by
//! `HERALD_TEST_K8S`; `.ci/run` sets it): etcd and kube-apiserver on free loopback ports in
//! about 5 s, stopped and removed on drop. Tests that need API semantics (watches, Leases,
//! the status subresource) take one; without the variable they say so and pass.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// A running apiserver of the kit.
pub struct Apiserver {
    kit: PathBuf,
    pub dir: PathBuf,
    env: HashMap<String, String>,
}

impl Apiserver {
    /// Starts one, or returns `None` (after saying why) when `HERALD_TEST_K8S` is not set.
    pub fn start(test: &str) -> Option<Self> {
        let Some(kit) = std::env::var_os("HERALD_TEST_K8S").map(PathBuf::from) else {
            eprintln!(
                "SKIPPED {test}: HERALD_TEST_K8S is not set (the directory of the Kubernetes \
                 test kit, ../shared/k8s; .ci/run sets it)"
            );
            return None;
        };
        crate::trace();
        let started = Instant::now();
        // The kit picks free ports and binds them a moment later; another test can take one in
        // between ("address already in use"), so a start that lost that race is tried again.
        let mut attempt = 0;
        let dir = loop {
            attempt += 1;
            // Short: the kit puts unix sockets under it.
            let dir = PathBuf::from(format!(
                "/tmp/hka-{}-{}",
                std::process::id(),
                uuid_fragment()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("apiserver directory");
            let out = Command::new(kit.join("start"))
                .arg(&dir)
                .output()
                .expect("run the kit's start");
            if out.status.success() {
                break dir;
            }
            let logs = std::fs::read_dir(dir.join("logs"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<String>();
            let _ = Command::new(kit.join("stop")).arg(&dir).status();
            let _ = std::fs::remove_dir_all(&dir);
            assert!(
                attempt < 3 && logs.contains("address already in use"),
                "the kit could not start an apiserver in {} (attempt {attempt}):\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let env = std::fs::read_to_string(dir.join("env"))
            .expect("the apiserver's env file")
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        eprintln!("{test}: apiserver started in {:.1?}", started.elapsed());
        Some(Apiserver { kit, dir, env })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        PathBuf::from(
            self.env
                .get("KUBECONFIG")
                .expect("KUBECONFIG in the apiserver's env"),
        )
    }

    /// An admin client.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read the kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration from the kubeconfig");
        kube::Client::try_from(config).expect("a kube client")
    }
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = Command::new(self.kit.join("stop")).arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_fragment() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
