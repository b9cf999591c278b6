#!/usr/bin/env python3
"""The console (#16) in a real browser: headless Debian chromium driven by
selenium, against the release binary, with grpcurl publishing the seed
samples and a local webhook receiver that can be told to fail.

    console_browser.py BIN GRPCURL SHOTS_DIR

Scenario: log in with an admin token through the form; create an endpoint
to the receiver through the form; publish the seed samples with grpcurl
and watch them arrive on the live page; make the receiver fail until a
delivery is dead; retry it from the page and see it delivered; rotate the
secret; pause and resume. Fails on any browser console error (a CSP
violation is one). Saves a screenshot of each page in SHOTS_DIR.
Every wait is bounded; the broker and receiver are stopped at the end.
"""

import glob
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By

BIN, GRPCURL, SHOTS = sys.argv[1], sys.argv[2], sys.argv[3]
WAIT = 20


class Receiver(BaseHTTPRequestHandler):
    fail = False
    received = []

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(n)
        Receiver.received.append(body)
        status = 500 if Receiver.fail else 200
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"no" if Receiver.fail else b"ok")

    def log_message(self, *args):
        pass


def wait_until(what, cond, timeout=WAIT):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            got = cond()
        except WebDriverException:
            # The page is being replaced (stale or not yet present element).
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise SystemExit(f"FAIL: timed out waiting for {what}")


def main():
    os.makedirs(SHOTS, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="stevedore-console-")
    token = secrets.token_urlsafe(32)
    digest = subprocess.run([BIN, "hash-token"], input=token, capture_output=True,
                            text=True, check=True).stdout.strip()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"

    env = {k: v for k, v in os.environ.items() if not k.startswith("STEVEDORE_")}
    env.update(STEVEDORE_ALLOW_HTTP="true", STEVEDORE_ALLOW_NETWORKS="127.0.0.0/8",
               STEVEDORE_TOKENS=f"ops:admin:{digest}", STEVEDORE_LOG="warn")
    out = open(os.path.join(tmp, "broker.out"), "w+")
    broker = subprocess.Popen(
        [BIN, "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "off",
         "--console-listen", "127.0.0.1:0", "--data-dir", os.path.join(tmp, "data")],
        stdout=out, stderr=open(os.path.join(tmp, "broker.err"), "w"), env=env,
        stdin=subprocess.DEVNULL)
    driver = None
    try:
        def lines():
            out.seek(0)
            return out.read()
        text = wait_until("the broker's console line", lambda: "console on" in lines() and lines())
        grpc = re.search(r"listening on (\S+)", text).group(1)
        base = re.search(r"console on (\S+)", text).group(1)

        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--window-size=1400,1000", "--disable-gpu"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.set_page_load_timeout(WAIT)
        errors = []

        def check_console(where):
            for entry in driver.get_log("browser"):
                if entry["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in entry["message"]:
                    errors.append(f"{where}: {entry['message']}")

        def shot(name):
            check_console(name)
            driver.save_screenshot(os.path.join(SHOTS, f"{name}.png"))

        def go(path):
            driver.get(base + path)

        def click(css):
            driver.find_element(By.CSS_SELECTOR, css).click()

        def body():
            return driver.find_element(By.TAG_NAME, "body").text

        # Log in.
        go("/")
        wait_until("the login page", lambda: "Admin token" in body())
        shot("login")
        driver.find_element(By.ID, "token").send_keys("wrong-token-wrong-token")
        click("form button[type=submit]")
        wait_until("the wrong-token error", lambda: "unknown or revoked token" in body())
        # The deliberate wrong token is answered 401, which chromium logs as
        # a failed resource: drop exactly that entry, keep anything else.
        for entry in driver.get_log("browser"):
            if not re.search(r"/login - Failed to load resource: .* 401", entry["message"]):
                errors.append(f"wrong token: {entry['message']}")
        driver.find_element(By.ID, "token").send_keys(token)
        click("form button[type=submit]")
        wait_until("the overview", lambda: "No endpoints yet" in body())
        shot("overview-empty")

        # Create an endpoint through the form.
        go("/endpoints/new")
        driver.find_element(By.ID, "url").send_keys(hook)
        driver.find_element(By.ID, "description").send_keys("Warehouse dashboard")
        for t in ["pick.confirmed", "shipment.closed", "channel_inventory.updated"]:
            click(f"input[name=event_types][value='{t}']")
        driver.find_element(By.ID, "retry_schedule").send_keys("0s, 1s")
        driver.find_element(By.NAME, "header_name").send_keys("X-Api-Key")
        driver.find_element(By.NAME, "header_value").send_keys("dashboard-key-123")
        shot("endpoint-form")
        click("#endpoint-form button[type=submit]")
        secret = wait_until("the secret", lambda: driver.find_elements(By.ID, "secret")
                            and driver.find_element(By.ID, "secret").text)
        assert secret.startswith("whsec_"), secret
        shot("endpoint-created")
        endpoint = driver.find_element(By.CSS_SELECTOR, "main a").get_attribute("href").rsplit("/", 1)[1]

        # Publish the seed samples and watch them arrive live.
        go("/live")
        wait_until("the live stream", lambda: driver.find_element(By.ID, "live-status")
                   .get_attribute("data-connected"))
        samples = sorted(glob.glob("examples/*.json"))
        for sample in samples:
            with open(sample) as f:
                subprocess.run([GRPCURL, "-plaintext", "-H", f"authorization: Bearer {token}",
                                "-d", "@", grpc, "stevedore.v1.Publisher/Publish"],
                               stdin=f, check=True, capture_output=True, timeout=WAIT)
        rows = lambda: driver.find_elements(By.CSS_SELECTOR, "#live tbody tr")
        wait_until("3 deliveries on the live page", lambda: len(rows()) >= 3)
        assert "delivered" in body(), body()
        shot("live")
        go("/")
        shot("overview")

        # The receiver fails until a delivery is dead.
        Receiver.fail = True
        with open("examples/pick_confirmed.json") as f:
            sample = json.load(f)
        sample["event"]["id"] = "browser-dead-1"
        subprocess.run([GRPCURL, "-plaintext", "-H", f"authorization: Bearer {token}", "-d",
                        json.dumps(sample), grpc, "stevedore.v1.Publisher/Publish"],
                       check=True, capture_output=True, timeout=WAIT)

        def dead_row():
            go(f"/endpoints/{endpoint}?state=dead")
            return "browser-dead-1" in body()
        wait_until("a dead delivery", dead_row)
        shot("endpoint-dead")
        Receiver.fail = False
        click("#deliveries button[value=retry]")
        wait_until("the retry message", lambda: "retrying delivery" in body())

        def delivered():
            go(f"/endpoints/{endpoint}?state=delivered")
            return "browser-dead-1" in body()
        wait_until("the retried delivery delivered", delivered)
        shot("endpoint")
        click("#deliveries tbody tr a")
        wait_until("the delivery page", lambda: "Attempts" in body())
        assert "500" in body() and "200" in body(), body()
        shot("delivery")

        # Send a test event (htmx swaps the outcome in).
        go(f"/endpoints/{endpoint}")
        click("button[value=test]")
        wait_until("the test outcome", lambda: "delivered (status 200" in body())

        # Rotate the secret.
        click("button[value=rotate]")
        new = wait_until("the new secret", lambda: driver.find_elements(By.ID, "secret")
                         and driver.find_element(By.ID, "secret").text)
        assert new.startswith("whsec_") and new != secret
        shot("secret-rotated")

        # Pause and resume.
        go(f"/endpoints/{endpoint}")
        click("button[value=pause]")
        wait_until("paused", lambda: "paused" in driver.find_element(By.CSS_SELECTOR, "h1").text)
        click("button[value=resume]")
        wait_until("resumed", lambda: "paused" not in driver.find_element(By.CSS_SELECTOR, "h1").text)

        go(f"/endpoints/{endpoint}/edit")
        assert "dashboard-key-123" not in driver.page_source
        shot("endpoint-edit")
        go("/catalog")
        shot("catalog")
        if errors:
            raise SystemExit("FAIL: browser console errors:\n" + "\n".join(errors))
        print(f"console browser scenario: ok ({len(Receiver.received)} webhooks received, "
              f"screenshots in {SHOTS})")
        print("console: 1 passed, 0 failed")
    finally:
        if driver is not None:
            driver.quit()
        broker.terminate()
        try:
            broker.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            broker.kill()
        receiver.shutdown()


if __name__ == "__main__":
    main()
