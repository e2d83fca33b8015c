//! `walhook demo` prints a one-time console login link that logs in once.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::daemon::spawn_demo;

use super::Console;

#[tokio::test]
async fn demo_prints_a_console_link_that_logs_in_once() {
    let (mut child, rx) = spawn_demo();
    let deadline = Instant::now() + Duration::from_secs(60);
    let link = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("demo printed a console link within 60 s");
        if line.contains("/console/login?code=") {
            break line.trim().to_owned();
        }
    };
    let (base, path) = link.split_at(link.find("/console").unwrap());
    let code = path.strip_prefix("/console/login?code=").unwrap();
    assert_eq!(code.len(), 43);
    let mut console = Console::at(base);
    let page = console.get(path).await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let login = console
        .post("/console/login", &[("csrf", &csrf), ("code", code)])
        .await;
    assert_eq!((login.status, login.header("location")), (303, "/console"));
    let overview = console.get("/console/overview").await;
    assert_eq!(overview.status, 200);
    assert!(overview.text.contains("admin (admin)"), "{}", overview.text);
    let mut again = Console::at(base);
    let csrf = again.get(path).await.csrf();
    let second = again
        .post("/console/login", &[("csrf", &csrf), ("code", code)])
        .await;
    assert_eq!(second.status, 401);
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
