#!/usr/bin/env python3
"""The web console in a real browser (run by scripts/console-test.sh).

Starts a 3-node cluster of real `kvnode` processes on 127.0.0.1 (RF 3, a
tokens file, so the page must be given the admin token), loads /ui of n1 in
headless Chromium driven by ChromeDriver (selenium), and checks, failing
with a message at the first that does not hold:

1. without a token the page says it needs one; once the admin token is
   typed (kept in the tab's sessionStorage) it shows 3 members UN;
2. n3 killed (SIGKILL) turns DN on the page within DOWN_WITHIN_S seconds;
3. a key put through the page's key browser reads back with curl from n2,
   and the page's Get shows it; a value that is not UTF-8 shows as hex.

Prints the time each step took and writes screenshots to --screenshots.
Everything it starts is stopped on exit, also on failure.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

SECRET = "console-test-secret-0123456789abcdef"
# The failure detector needs a few seconds of silence; the page refreshes
# every 2 s. Well past both, well short of a timeout nobody would notice.
DOWN_WITHIN_S = 20
KEY = "console/key one"
VALUE = "written through the console"


def free_addrs(n):
    """n pairs of free (TCP, UDP) loopback ports, held together so no pair repeats."""
    held = []
    for _ in range(n):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        held.append((t, u))
    ports = [(t.getsockname()[1], u.getsockname()[1]) for t, u in held]
    for t, u in held:
        t.close()
        u.close()
    return ports


class Cluster:
    """n kvnode processes seeded by the first; killed on close."""

    def __init__(self, binary, n, workdir):
        self.dir = workdir
        out = subprocess.run([binary, "token", "create", "console-test", "admin"],
                             check=True, capture_output=True, text=True).stdout.split("\n")
        self.token, line = out[0], out[1]
        tokens = os.path.join(workdir, "tokens")
        with open(tokens, "w") as f:
            f.write(line + "\n")
        self.ports = free_addrs(n)
        seeds = f"127.0.0.1:{self.ports[0][1]}"
        env = dict(os.environ, KVNODE_CLUSTER_SECRET=SECRET, KVNODE_REPLICATION_FACTOR="3",
                   KVNODE_AUTH_TOKENS_FILE=tokens, KVNODE_LOG=os.environ.get("KVNODE_LOG", "warn"))
        self.procs = []
        for i, (http, gossip) in enumerate(self.ports, start=1):
            log = open(os.path.join(workdir, f"n{i}.log"), "w")
            self.procs.append(subprocess.Popen(
                [binary, "--node-id", f"n{i}", "--listen", f"127.0.0.1:{http}",
                 "--gossip-listen", f"127.0.0.1:{gossip}", "--seeds", seeds,
                 "--data-dir", os.path.join(workdir, f"n{i}")],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))

    def url(self, i, path):
        return f"http://127.0.0.1:{self.ports[i][0]}{path}"

    def wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        for i in range(len(self.procs)):
            while True:
                try:
                    with urllib.request.urlopen(self.url(i, "/ready"), timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"n{i + 1} not ready within {timeout} s:\n{self.log(i)}")
                    time.sleep(0.2)

    def request(self, i, method, path, body=None):
        req = urllib.request.Request(self.url(i, path), data=body, method=method,
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()

    def kill(self, i):
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def log(self, i):
        with open(os.path.join(self.dir, f"n{i + 1}.log")) as f:
            return f.read()[-4000:]

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def browser(chromium, chromedriver):
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,720", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


def codes(driver):
    """The page's members: id -> UN/DN/UJ/... as drawn. Read in one script
    call: the page redraws its tables every refresh, so elements found one
    call earlier may be gone."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#members tbody tr')]"
        ".map((r) => [r.dataset.id, r.dataset.code]))")


def text_of(driver, selector):
    """The text of the first element matching selector ('' if none), and its data-status."""
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]);"
        "return e ? [e.textContent, e.dataset.status || ''] : ['', ''];", selector)


def wait(driver, timeout, what, condition):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException as e:
        raise AssertionError(f"{what} within {timeout} s; the page shows {codes(driver)}, "
                             f"banner {text_of(driver, '#banner')[0]!r}") from e


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kvnode", required=True, help="the kvnode binary (a release build)")
    parser.add_argument("--screenshots", help="directory for the PNG screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="console-test-")
    cluster = Cluster(args.kvnode, 3, workdir)
    driver = None
    try:
        started = time.monotonic()
        cluster.wait_ready(60)
        print(f"cluster ready in {time.monotonic() - started:.1f} s")
        # Some traffic, so the page has rates and latencies to show.
        for n in range(300):
            cluster.request(n % 3, "PUT", f"/v1/kv/load-{n}", b"v" * 100)
            cluster.request(n % 3, "GET", f"/v1/kv/load-{n}")

        driver = browser(args.chromium, args.chromedriver)
        driver.get(cluster.url(0, "/ui"))
        wait(driver, 10, "the page did not ask for a token",
             lambda d: "token" in text_of(d, "#banner")[0])
        driver.find_element(By.ID, "token").send_keys(cluster.token)
        driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()
        stored = driver.execute_script("return sessionStorage.getItem('kvnode.token')")
        assert stored == cluster.token, "the token is not in sessionStorage"
        wait(driver, 10, "3 members UN not shown",
             lambda d: sorted(codes(d).values()) == ["UN", "UN", "UN"])
        # Two refreshes, so the rates are over an interval.
        cluster.request(0, "GET", "/v1/kv/load-1")
        wait(driver, 10, "no request rate shown",
             lambda d: text_of(d, "#requests tr[data-op=get] td:nth-child(2)")[0] not in ("", "-"))
        print("page shows 3 members UN:", codes(driver))
        if args.screenshots:
            driver.save_screenshot(os.path.join(args.screenshots, "console.png"))

        cluster.kill(2)
        killed = time.monotonic()
        wait(driver, DOWN_WITHIN_S, "n3 not shown DOWN", lambda d: codes(d).get("n3", "").startswith("D"))
        print(f"n3 killed: shown {codes(driver)['n3']} after {time.monotonic() - killed:.1f} s")

        driver.find_element(By.ID, "kv-key").send_keys(KEY)
        driver.find_element(By.ID, "kv-value").send_keys(VALUE)
        driver.find_element(By.ID, "kv-put").click()
        wait(driver, 10, "the put through the page did not answer 204",
             lambda d: text_of(d, "#kv-result")[1] == "204")
        path = "/v1/kv/" + urllib.parse.quote(KEY, safe="")
        curl = subprocess.run(["curl", "-sS", "-f", "-H", f"Authorization: Bearer {cluster.token}",
                               cluster.url(1, path)], capture_output=True, text=True)
        assert curl.returncode == 0, f"curl: {curl.stderr}"
        assert curl.stdout == VALUE, f"curl read back {curl.stdout!r}"
        print(f"put through the page, read back with curl from n2: {curl.stdout!r}")
        driver.find_element(By.ID, "kv-get").click()
        wait(driver, 10, "the page's Get did not show the value",
             lambda d: text_of(d, "#kv-result")[1] == "200" and VALUE in text_of(d, "#kv-result")[0])
        if args.screenshots:
            driver.save_screenshot(os.path.join(args.screenshots, "console-node-down.png"))
        # A value that is not UTF-8 is shown as hex, not as replacement characters.
        cluster.request(1, "PUT", "/v1/kv/console-binary", b"\xff\x00\x01")
        key = driver.find_element(By.ID, "kv-key")
        key.clear()
        key.send_keys("console-binary")
        driver.find_element(By.ID, "kv-get").click()
        wait(driver, 10, "the page did not show a binary value as hex",
             lambda d: "not UTF-8" in text_of(d, "#kv-result")[0] and "ff 00 01" in text_of(d, "#kv-result")[0])
        print("console test passed")
    except AssertionError as e:
        print(f"console test FAILED: {e}", file=sys.stderr)
        for i in range(3):
            print(f"--- n{i + 1} log tail ---\n{cluster.log(i)}", file=sys.stderr)
        return 1
    finally:
        if driver is not None:
            driver.quit()
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
