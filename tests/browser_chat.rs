//! The chat demo and the admin page in a real browser (contract §12): the
//! real binary with `--demo`, two chat tabs of one headless Chromium
//! exchange messages and see each other typing; a third page load gets the
//! room's history; the "force long polling" switch moves a tab to `poll`
//! and it still receives; the admin page shows the live connections.
//! Screenshots of the chat and admin pages go to `target/screenshots/`.
#![allow(clippy::unwrap_used, clippy::disallowed_types)]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::binary::Gateway;
use support::browser::{require_browser, Browser};

/// The whole test, start to finish.
const BUDGET: Duration = Duration::from_secs(60);
/// Any single DOM condition.
const STEP: Duration = Duration::from_secs(15);

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target").join("screenshots")
}

/// The transport pill's state and name.
const TRANSPORT: &str = "const p = document.getElementById('transport'); \
    return {state: p.dataset.state || '', transport: p.dataset.transport || '', text: p.textContent};";
/// The texts of the stored messages shown, in order.
const MESSAGES: &str =
    "return [...document.querySelectorAll('#messages li[data-id] .text')].map(e => e.textContent);";
/// The typing line.
const TYPING: &str = "return document.getElementById('typing').textContent;";

fn js_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Types `text` into the message box (an `input` event: the page sends a
/// "typing" ephemeral message), and sends it when `send`.
fn type_script(text: &str, send: bool) -> String {
    let submit = if send { "document.getElementById('send').requestSubmit();" } else { "" };
    format!(
        "const t = document.getElementById('text'); t.value = {}; \
         t.dispatchEvent(new Event('input', {{bubbles: true}})); {submit} return true;",
        js_str(text)
    )
}

fn texts(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

async fn connected(b: &Browser, who: &str, transport: &str) {
    b.wait_for(&format!("{who} connected over {transport}"), TRANSPORT, STEP, |v| {
        v["state"] == "connected" && v["transport"] == transport
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chat_tabs_talk_and_the_admin_page_shows_them() {
    require_browser();
    tokio::time::timeout(BUDGET, scenario()).await.unwrap_or_else(|_| panic!("took longer than {BUDGET:?}"));
}

async fn scenario() {
    let gw = Gateway::spawn(&["--demo"], &[]).await;
    let mut b = Browser::start(1200, 760).await;
    let room = "e2e";
    let page = |name: &str| gw.url(&format!("/demo/?name={name}&room={room}&poll=0"));

    // Alice and Bob, each in a tab, both on WebSocket.
    let alice = b.window().await;
    b.goto(&page("alice")).await;
    connected(&b, "alice", "ws").await;
    let bob = b.new_tab().await;
    b.goto(&page("bob")).await;
    connected(&b, "bob", "ws").await;

    // Bob types: Alice sees it (an ephemeral message), then his message.
    b.eval(&type_script("hello from bob", false)).await;
    b.switch(&alice).await;
    b.wait_for("bob typing", TYPING, STEP, |v| v.as_str() == Some("bob is typing…")).await;
    b.switch(&bob).await;
    b.eval(&type_script("hello from bob", true)).await;
    b.switch(&alice).await;
    b.wait_for("bob's message", MESSAGES, STEP, |v| texts(v) == ["hello from bob"]).await;
    b.wait_for("the typing line cleared by the message", TYPING, STEP, |v| v.as_str() == Some("")).await;

    // Alice answers; Bob sees it after his own.
    b.eval(&type_script("hi bob, alice here", true)).await;
    b.switch(&bob).await;
    b.wait_for("alice's answer", MESSAGES, STEP, |v| texts(v) == ["hello from bob", "hi bob, alice here"])
        .await;

    // A new visitor gets the history on joining.
    let carol = b.new_tab().await;
    b.goto(&page("carol")).await;
    connected(&b, "carol", "ws").await;
    b.wait_for("the room's history", MESSAGES, STEP, |v| {
        texts(v) == ["hello from bob", "hi bob, alice here"]
    })
    .await;

    // Who is online, from presence (join events and the presence list),
    // named from the others' hello messages: all three, in every tab.
    const ONLINE: &str =
        "return [...document.querySelectorAll('#online li')].map((li) => li.textContent).sort();";
    for tab in [&carol, &alice, &bob] {
        b.switch(tab).await;
        b.wait_for("alice, bob and carol online", ONLINE, STEP, |v| texts(v) == ["alice", "bob", "carol"])
            .await;
    }
    b.switch(&carol).await;

    // Carol forces long polling and still receives.
    b.eval("document.getElementById('forcepoll').click(); return true;").await;
    connected(&b, "carol", "poll").await;
    b.switch(&bob).await;
    b.eval(&type_script("anyone on long polling?", true)).await;
    b.switch(&carol).await;
    b.wait_for("the message over long polling", MESSAGES, STEP, |v| {
        texts(v).last().map(String::as_str) == Some("anyone on long polling?")
    })
    .await;
    b.screenshot(&screenshots().join("chat-poll.png")).await;

    // Alice's tab, as a newcomer sees the chat.
    b.switch(&alice).await;
    b.wait_for("bob's last message", MESSAGES, STEP, |v| texts(v).len() == 3).await;
    b.eval(&type_script("typing something…", false)).await;
    b.switch(&bob).await;
    b.wait_for("alice typing", TYPING, STEP, |v| v.as_str() == Some("alice is typing…")).await;
    b.screenshot(&screenshots().join("chat.png")).await;

    // The admin page: auth is off, so no key is needed; the live numbers.
    b.new_tab().await;
    b.goto(&gw.url("/admin")).await;
    let count = b
        .wait_for(
            "a live connection count",
            "const c = document.querySelector('#card-connections b'); return c ? Number(c.textContent) : 0;",
            STEP,
            |v| v.as_u64() >= Some(2),
        )
        .await;
    // Alice and Bob on WebSocket; Carol's poll is listed while held.
    assert!(count.as_u64() >= Some(2), "{count}");
    b.wait_for(
        "the connections table",
        "return [...document.querySelectorAll('#connections tr')].map(r => r.children[1] && r.children[1].textContent);",
        STEP,
        |v| texts(v).iter().filter(|t| *t == "ws").count() >= 2,
    )
    .await;
    b.wait_for("the chat topic", "return document.getElementById('topics').textContent;", STEP, |v| {
        v.as_str().is_some_and(|s| s.contains("chat.e2e"))
    })
    .await;
    b.eval("document.getElementById('ptopic').value = 'chat.e2e'; document.getElementById('presenceform').requestSubmit(); return true;")
        .await;
    b.wait_for(
        "a presence answer or its error",
        "return document.getElementById('presence-summary').textContent;",
        STEP,
        |v| v.as_str().is_some_and(|s| s.contains("chat.e2e")),
    )
    .await;
    b.screenshot(&screenshots().join("admin.png")).await;
    // Its disconnect button kicks a connection (counted; the chat tab's
    // client reconnects by itself).
    b.eval("document.querySelector('#connections button.danger').click(); return true;").await;
    b.wait_for(
        "the kick counted",
        "const c = document.querySelector('#card-kicked b'); return c ? Number(c.textContent) : 0;",
        STEP,
        |v| v.as_u64() >= Some(1),
    )
    .await;
    let admin = b.window().await;
    b.switch(&alice).await;
    connected(&b, "alice (after the kick)", "ws").await;
    b.switch(&bob).await;
    connected(&b, "bob (after the kick)", "ws").await;
    b.eval(&type_script("still here after the kick", true)).await;
    b.switch(&alice).await;
    b.wait_for("the message after the kick", MESSAGES, STEP, |v| {
        texts(v).last().map(String::as_str) == Some("still here after the kick")
    })
    .await;
    b.switch(&admin).await;
    b.eval("window.scrollTo(0, document.body.scrollHeight); return true;").await;
    b.screenshot(&screenshots().join("admin-bottom.png")).await;

    b.quit().await;
    drop(b);
    drop(gw);
}
