"""Drives Debian's headless Chromium through the walhook console (Playwright for Python).

Run by tests/console/browser.rs with one JSON argument (base URL, tokens, subscription ids,
screenshot directory). Steps that need the database print `WAIT <step>` and read one line
of JSON from stdin (the test's answer) before going on. Any failure raises: exit status 1
with the reason on stderr. Prints `DONE` at the end.
"""

import json
import sys
import time

from playwright.sync_api import expect, sync_playwright

ARGS = json.loads(sys.argv[1])
BASE = ARGS["base"]
SHOTS = ARGS["screenshots"]


def wait(step):
    print(f"WAIT {step}", flush=True)
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(f"no answer from the test for {step}")
    return json.loads(line)


def login(page, token):
    page.goto(f"{BASE}/console/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(f"{BASE}/console/**")


def main():
    # Playwright's launch() gives the browser a fresh temporary profile (its own
    # --user-data-dir, removed at close).
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=ARGS["chromium"],
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        errors = []

        # 1. Admin: log in, the overview, then an INSERT's delivery in recent deliveries.
        admin = browser.new_context(viewport={"width": 1280, "height": 900})
        page = admin.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        login(page, ARGS["admin_token"])
        expect(page).to_have_url(f"{BASE}/console/overview")
        expect(page.locator("#capture")).to_contain_text("streaming")

        sub = ARGS["subscription"]
        page.goto(f"{BASE}/console/subscriptions/{sub}")
        expect(page.locator("#recent")).to_contain_text("No attempts")
        event = wait("insert")["event_id"]
        started = time.monotonic()
        row = page.locator("#recent tr.delivery", has_text=event)
        expect(row).to_contain_text("orders.created", timeout=2000)
        expect(row.locator(".outcome")).to_have_text("delivered", timeout=2000)
        took = time.monotonic() - started
        if took > 2.0:
            raise SystemExit(f"the delivery appeared after {took:.2f} s")
        print(f"INFO delivery shown {took:.2f} s after the insert", flush=True)

        # 2. A dead letter: redeliver it, see it delivered.
        dead = wait("dead")["event_id"]
        page.reload()
        queued = page.locator("#queue tr.queued", has_text=dead)
        expect(queued).to_contain_text("dead")
        page.screenshot(path=f"{SHOTS}/subscription.png", full_page=True)
        queued.locator("button.redeliver").click()
        expect(page.locator("#notice")).to_contain_text("queued for redelivery")
        delivered = page.locator("#recent tr.delivery", has_text=dead).filter(has_text="delivered")
        expect(delivered.first).to_be_visible(timeout=10000)
        expect(page.locator("#queue")).to_contain_text("Nothing queued", timeout=10000)
        wait("redelivered")

        # The overview's charts fill in (a sample every 10 s), refreshed live; its screenshot.
        page.goto(f"{BASE}/console/overview")
        page.wait_for_function(
            """() => document.querySelectorAll("svg.chart polyline")[1]
                   .getAttribute("points").trim().split(" ").length >= 2""",
            timeout=30000,
        )
        page.screenshot(path=f"{SHOTS}/overview.png", full_page=True)

        # 3. 360 px wide, dark.
        narrow = browser.new_context(
            viewport={"width": 360, "height": 780}, color_scheme="dark", device_scale_factor=1
        )
        small = narrow.new_page()
        login(small, ARGS["admin_token"])
        small.goto(f"{BASE}/console/subscriptions/{sub}")
        width = small.evaluate("document.documentElement.scrollWidth")
        if width > 360:
            raise SystemExit(f"the subscription page is {width} px wide at 360 px")
        background = small.evaluate("getComputedStyle(document.body).backgroundColor")
        if background != "rgb(15, 19, 24)":
            raise SystemExit(f"dark mode background is {background}")
        small.screenshot(path=f"{SHOTS}/subscription-360-dark.png", full_page=True)
        narrow.close()

        # 4. Another owner: the subscription is out of reach, as HTML and as JSON.
        other = browser.new_context()
        bob = other.new_page()
        login(bob, ARGS["other_token"])
        expect(bob).to_have_url(f"{BASE}/console/subscriptions")
        expect(bob.locator("main")).not_to_contain_text(sub)
        answer = bob.goto(f"{BASE}/console/subscriptions/{sub}")
        if answer.status != 404:
            raise SystemExit(f"another owner's subscription page answered {answer.status}")
        expect(bob.locator("#error")).to_have_text(f"no subscription {sub}")
        fetched = bob.evaluate(
            """async (url) => { const r = await fetch(url); return [r.status, await r.json()]; }""",
            f"{BASE}/console/subscriptions/{sub}/deliveries.json",
        )
        if fetched[0] != 404 or fetched[1]["error"]["code"] != "not_found":
            raise SystemExit(f"another owner's deliveries as JSON: {fetched}")
        other.close()

        if errors:
            raise SystemExit(f"console errors in the page: {errors}")
        admin.close()
        browser.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
