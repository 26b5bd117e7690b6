#!/usr/bin/env python3
"""The page of `notifications serve` in a real browser (issue 19).

Starts `notifications serve` on a sqlite:// file and 127.0.0.1:0, opens its page in Debian's
headless Chromium driven through chromedriver (the WebDriver protocol, spoken here with urllib
only), waits until the page says "live", publishes an event with `notifications publish` from
another process, and checks that the page's DOM shows it (an element
.event[data-name="browser.check"] whose text holds a marker unique to this run). Then it stops the
server with SIGTERM and checks that the page says "server shut down" and that serve exits 0.

Usage: test_event_page.py PATH_OF_THE_NOTIFICATIONS_PROGRAM
Exit: 0 passed, 1 failed, 77 skipped (chromium or chromedriver missing, and the environment
variable TEST_REQUIRE_BROWSER not set; scripts/test.sh sets it, so CI cannot skip).
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_SECONDS = 20
EVENT_NAME = "browser.check"


class Failure(Exception):
    pass


def say(text):
    print("test_event_page: " + text, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few WebDriver commands the test needs (W3C protocol, JSON over HTTP)."""

    def __init__(self, port):
        self.base = "http://127.0.0.1:%d" % port
        self.session = None

    def call(self, method, path, body=None, timeout=60):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read().decode() or "{}").get("value")
        except urllib.error.HTTPError as e:
            raise Failure("WebDriver %s %s: HTTP %d: %s" % (method, path, e.code, e.read().decode(errors="replace")[:2000]))

    def ready(self):
        try:
            return bool(self.call("GET", "/status", timeout=2).get("ready"))
        except (OSError, Failure, ValueError):
            return False

    def start(self, profile_dir):
        capabilities = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--user-data-dir=" + profile_dir, "--no-first-run"],
            },
        }}}
        self.session = self.call("POST", "/session", capabilities, timeout=90)["sessionId"]

    def open(self, url):
        self.call("POST", "/session/%s/url" % self.session, {"url": url})

    def script(self, source, *args):
        return self.call("POST", "/session/%s/execute/sync" % self.session, {"script": source, "args": list(args)})

    def quit(self):
        if self.session is not None:
            try:
                self.call("DELETE", "/session/%s" % self.session, timeout=20)
            except (OSError, Failure):
                pass
            self.session = None


def wait_for(what, check, seconds=WAIT_SECONDS):
    """Polls check() until it returns something true, at most `seconds`; returns it or raises."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise Failure("%s: not within %d s (last seen: %r)" % (what, seconds, last))


def stop(process, name):
    """Ends a process this test started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        say("%s (pid %d) did not end on SIGTERM: killing it" % (name, process.pid))
        process.kill()
        process.wait(timeout=10)


def main():
    if len(sys.argv) != 2:
        print("usage: test_event_page.py PATH_OF_THE_NOTIFICATIONS_PROGRAM", file=sys.stderr)
        return 1
    cli = sys.argv[1]
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        if os.environ.get("TEST_REQUIRE_BROWSER"):
            say("FAIL: %s missing and TEST_REQUIRE_BROWSER is set "
                "(scripts/install-deps.sh --with-browser installs chromium and chromium-driver)" % ", ".join(missing))
            return 1
        say("SKIP: %s missing (Debian: chromium, chromium-driver; scripts/install-deps.sh --with-browser)"
            % ", ".join(missing))
        return 77

    tmp = tempfile.mkdtemp(prefix="notifications-browser-")
    url = "sqlite://" + os.path.join(tmp, "bus.db")
    serve = driver_process = None
    driver = None
    serve_err = open(os.path.join(tmp, "serve.stderr"), "w+")
    driver_log = os.path.join(tmp, "chromedriver.log")
    try:
        # The server, on a free port; its first line says which.
        serve = subprocess.Popen([cli, "serve", "--url", url, "--http", "127.0.0.1:0"],
                                 stdout=subprocess.PIPE, stderr=serve_err, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in serve.stdout], daemon=True).start()
        try:
            line = lines.get(timeout=WAIT_SECONDS)
        except queue.Empty:
            raise Failure("serve printed no line within %d s (exit status %r)" % (WAIT_SECONDS, serve.poll()))
        say("serve: " + line.strip())
        if not line.startswith("serving http://") or " (events at /events)" not in line:
            raise Failure("serve's first line is not 'serving http://HOST:PORT/ (events at /events)': %r" % line)
        page_url = line.split()[1]

        # The browser.
        driver_port = free_port()
        driver_process = subprocess.Popen([CHROMEDRIVER, "--port=%d" % driver_port, "--log-path=" + driver_log],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        driver = WebDriver(driver_port)
        wait_for("chromedriver ready on port %d" % driver_port,
                 lambda: driver_process.poll() is None and driver.ready() or driver_process.poll() is not None)
        if driver_process.poll() is not None:
            raise Failure("chromedriver exited with status %d" % driver_process.returncode)
        driver.start(os.path.join(tmp, "profile"))
        driver.open(page_url)
        status = lambda: driver.script("const s = document.getElementById('status'); return s ? s.textContent : null;")
        wait_for("the page's #status says 'live'", lambda: status() == "live")
        say("page loaded, status live")

        # An event instrumented after the page loaded, from another process.
        marker = "marker-" + uuid.uuid4().hex
        published = subprocess.run([cli, "publish", EVENT_NAME, json.dumps({"marker": marker, "check": "<b>&'\""}),
                                    "--url", url], capture_output=True, text=True, timeout=60)
        if published.returncode != 0:
            raise Failure("notifications publish exited %d: %s" % (published.returncode, published.stderr.strip()))
        say("published %s %s (id %s)" % (EVENT_NAME, marker, published.stdout.strip()))

        rows = lambda: driver.script(
            "return Array.from(document.querySelectorAll('.event[data-name=\"%s\"]')).map(e => e.textContent);"
            % EVENT_NAME)
        found = wait_for("a row .event[data-name=\"%s\"] holding %s" % (EVENT_NAME, marker),
                         lambda: [text for text in rows() if marker in text])
        say("the page shows: " + found[0])
        # The payload is text, not markup: the page inserted no <b> element.
        if driver.script("return document.querySelectorAll('#events b').length;") != 0:
            raise Failure("the payload's '<b>' became an element: the page inserted data as HTML")

        # SIGTERM: the stream's "shutdown" event reaches the page, and serve exits 0.
        serve.terminate()
        wait_for("the page's #status says 'server shut down'", lambda: status() == "server shut down")
        say("after SIGTERM the page says: server shut down")
        try:
            code = serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise Failure("serve did not exit within 20 s of SIGTERM")
        if code != 0:
            raise Failure("serve exited %d after SIGTERM" % code)
        say("PASS")
        return 0
    except Exception as e:  # noqa: BLE001 -- a WebDriver, socket or subprocess error fails the test the same way
        say("FAIL: %s" % (e if isinstance(e, Failure) else "%s: %s" % (type(e).__name__, e)))
        if driver is not None and driver.session is not None:
            try:
                print("---- the page's DOM ----\n" + str(driver.script("return document.documentElement.outerHTML;")))
            except Exception as dom_error:  # noqa: BLE001
                print("(the DOM could not be read: %s)" % dom_error)
        serve_err.seek(0)
        print("---- serve's standard error ----\n" + serve_err.read())
        return 1
    finally:
        if driver is not None:
            driver.quit()
        stop(driver_process, "chromedriver")
        stop(serve, "serve")
        serve_err.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
