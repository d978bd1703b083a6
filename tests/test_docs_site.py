"""The documentation site, built offline (`make docs`: nnunet_nb.docs.build_site) and opened in headless Chromium.

One session-scoped build (notebooks at the IN_TEST budget, two at a time, pages cached in `_site_build/` by content, as
`make docs` caches them) is served on 127.0.0.1 and visited page by page through the DevTools protocol over a pipe
(`--remote-debugging-pipe`: the standard library is enough, no driver). Checked: every notebook of the sidebar builds;
the sidebar's order; every page has a title and content; every picture the notebooks made is an <img> that loaded;
the API reference holds every public function and class of the package at the anchor nbdev's links use; every
internal link leads to a file (and anchor) that exists; no page asks for anything from another host. Screenshots of
the index and an API page go to `_site_build/screenshots/`.

Chromium comes from Debian (`make test` installs it: Makefile target `chromium`); without it the tests are skipped,
except under CI, where they fail."""
from __future__ import annotations
import base64, fcntl, functools, http.server, io, json, os, re, shutil, subprocess, tempfile, threading, time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit, unquote
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT/'_site_build'/'screenshots'
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--disable-extensions', '--hide-scrollbars', '--mute-audio',
         # nothing may leave the machine, whatever a page asks for; the requests are still seen (and failed) below
         '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1']


def chromium_executable():
    for name in (os.environ.get('CHROMIUM'), 'chromium', 'chromium-browser', 'google-chrome'):
        if name and shutil.which(name): return shutil.which(name)


class Chromium:
    "Headless Chromium driven through the DevTools protocol on fds 3/4 (`--remote-debugging-pipe`)."

    def __init__(self, executable):
        self.profile = tempfile.mkdtemp(prefix='chromium-profile-')
        read_end, self._to_browser = os.pipe()
        self._from_browser, write_end = os.pipe()
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (read_end, write_end))  # never 3 or 4 themselves
        os.close(read_end); os.close(write_end)
        # Chromium reads commands on fd 3 and writes on fd 4: bash (fds above 9) moves the pipe ends there, then becomes Chromium
        command = ['bash', '-c', f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-',
                   executable, *FLAGS, f'--user-data-dir={self.profile}', '--remote-debugging-pipe', 'about:blank']
        self.proc = subprocess.Popen(command, pass_fds=(child_r, child_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_r); os.close(child_w)
        self._next_id, self._lock = 0, threading.Lock()
        self._replies, self._waiting = {}, {}
        self.events = []                      # every event, in order: (sessionId, method, params)
        self._reader = threading.Thread(target=self._read, daemon=True); self._reader.start()

    def _read(self):
        buffer = b''
        while True:
            try: chunk = os.read(self._from_browser, 1 << 16)
            except OSError: chunk = b''
            if not chunk: break
            buffer += chunk
            while b'\0' in buffer:
                raw, buffer = buffer.split(b'\0', 1)
                message = json.loads(raw)
                if 'id' in message:
                    with self._lock:
                        self._replies[message['id']] = message
                        event = self._waiting.pop(message['id'], None)
                    if event: event.set()
                else: self.events.append((message.get('sessionId'), message['method'], message.get('params', {})))
        for event in list(self._waiting.values()): event.set()

    def send(self, method, params=None, session=None, timeout=60):
        with self._lock:
            self._next_id += 1; number = self._next_id
            done = self._waiting[number] = threading.Event()
        message = {'id': number, 'method': method, 'params': params or {}}
        if session: message['sessionId'] = session
        os.write(self._to_browser, json.dumps(message).encode() + b'\0')
        if not done.wait(timeout): raise TimeoutError(f'Chromium did not answer {method} in {timeout} s')
        reply = self._replies.pop(number, None)
        if reply is None: raise RuntimeError(f'Chromium exited while answering {method}')
        if 'error' in reply: raise RuntimeError(f'{method}: {reply["error"]}')
        return reply.get('result', {})

    def wait_event(self, method, session, after, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            for s, m, params in self.events[after:]:
                if s == session and m == method: return params
            time.sleep(0.02)
        raise TimeoutError(f'no {method} within {timeout} s')

    def close(self):
        try: self.send('Browser.close', timeout=10)
        except Exception: pass
        try: self.proc.wait(10)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try: os.close(fd)
            except OSError: pass
        shutil.rmtree(self.profile, ignore_errors=True)


class Tab:
    "One page target of the browser."

    def __init__(self, browser, width=1280, height=1000):
        self.browser = browser
        target = browser.send('Target.createTarget', {'url': 'about:blank'})['targetId']
        self.session = browser.send('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
        for domain in ('Page', 'Network', 'Runtime'): browser.send(f'{domain}.enable', session=self.session)
        browser.send('Emulation.setDeviceMetricsOverride', {'width': width, 'height': height, 'deviceScaleFactor': 1, 'mobile': False},
                     session=self.session)

    def open(self, url, timeout=60):
        mark = len(self.browser.events)
        self.browser.send('Page.navigate', {'url': url}, session=self.session)
        self.browser.wait_event('Page.loadEventFired', self.session, mark, timeout)

    def evaluate(self, expression):
        result = self.browser.send('Runtime.evaluate', {'expression': expression, 'awaitPromise': True, 'returnByValue': True},
                                   session=self.session)
        if 'exceptionDetails' in result: raise RuntimeError(f'page script failed: {result["exceptionDetails"]}')
        return result['result'].get('value')

    def screenshot(self, file):
        height = self.evaluate('Math.min(document.documentElement.scrollHeight, 4000)')
        self.browser.send('Emulation.setDeviceMetricsOverride', {'width': 1280, 'height': height, 'deviceScaleFactor': 1, 'mobile': False},
                          session=self.session)
        data = self.browser.send('Page.captureScreenshot', {'format': 'png'}, session=self.session)['data']
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        Path(file).write_bytes(base64.b64decode(data))
        return Path(file)


# What a page looks like to a reader: measured in the page once its pictures have decoded.
PAGE_FACTS = """(async () => {
  const images = [...document.images];
  images.forEach(i => { i.loading = 'eager'; });
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  const main = document.querySelector('main') || document.body;
  return {
    title: document.title,
    h1: (document.querySelector('h1') || {textContent: ''}).textContent.trim(),
    text: main.innerText.length,
    images: images.map(i => ({src: i.getAttribute('src').slice(0, 50), width: i.naturalWidth, complete: i.complete})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
    sidebar: [...document.querySelectorAll('#quarto-sidebar a.sidebar-link')].map(a => a.href),
  };
})()"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='session')
def site():
    "The site, built once (test budget; the page cache in _site_build/ is shared with `make docs`)."
    from fastcore.xtras import working_directory
    from nnunet_nb.docs import build_site
    out = Path(tempfile.mkdtemp(prefix='nnunet_nb_site-'))/'_site'
    with working_directory(ROOT): report = build_site(out=out, test_budget=True, workers=2)
    print(report.summary())
    yield report
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope='session')
def visited(site):
    "Every HTML page of the site, opened in Chromium over HTTP on 127.0.0.1: {page path: facts}, and all requests made."
    executable = chromium_executable()
    if executable is None:
        if os.environ.get('CI'): pytest.fail('Chromium is missing: `make chromium` installs it (Debian: apt-get install chromium)')
        pytest.skip('Chromium is not installed (`make chromium`)')
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(site.out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f'http://127.0.0.1:{server.server_address[1]}/'
    browser = Chromium(executable)
    try:
        tab = Tab(browser)
        pages = {}
        for file in sorted(site.out.rglob('*.html')):
            path = file.relative_to(site.out).as_posix()
            tab.open(base + path)
            pages[path] = tab.evaluate(PAGE_FACTS)
        tab.open(base + 'index.html'); tab.screenshot(SHOTS/'index.png')
        api_page = site.pages.get('03_synthetic.ipynb') or next(p for nb, p in site.pages.items() if nb[:2].isdigit())
        tab.open(base + api_page); tab.screenshot(SHOTS/'api_page.png')
        requests = [p['request']['url'] for s, m, p in browser.events if m == 'Network.requestWillBeSent']
        responses = [(p['response']['url'], p['response']['status']) for s, m, p in browser.events if m == 'Network.responseReceived']
    finally:
        browser.close(); server.shutdown(); server.server_close()
    return {'base': base, 'pages': pages, 'requests': requests, 'responses': responses}


def nbs_notebooks():
    "The notebooks under nbs/ as nbdev's sidebar orders them: index, the numbered stages, then each sub-folder."
    nbs = ROOT/'nbs'
    top = sorted(p.name for p in nbs.glob('*.ipynb') if not p.name.startswith(('_', '.')) and p.name != 'index.ipynb')
    folders = sorted(d for d in nbs.iterdir() if d.is_dir() and not d.name.startswith(('_', '.')))
    return ['index.ipynb'] + top + [p.relative_to(nbs).as_posix() for d in folders for p in sorted(d.rglob('*.ipynb'))
                                    if '.ipynb_checkpoints' not in p.parts]


def test_every_notebook_builds(site):
    assert site.failed == {}, 'notebooks that failed to build:\n\n' + '\n\n'.join(f'{nb}:\n{msg}' for nb, msg in site.failed.items())
    assert set(site.pages) == set(nbs_notebooks()), 'the site misses notebooks of nbs/ (or has others)'
    assert site.warnings == [], f"the renderer's warnings: {site.warnings}"


def test_sidebar_lists_the_pages_in_order(site, visited):
    expected = [site.pages[nb] for nb in nbs_notebooks() if nb in site.pages]
    for path, facts in visited['pages'].items():
        if path not in site.pages.values(): continue
        shown = [urlsplit(h).path.lstrip('/') for h in facts['sidebar']]
        shown = [s for s in shown if s.endswith('.html')]             # section headings link nowhere
        assert shown == expected, f'{path}: sidebar {shown}'
    stages = [nb for nb in site.pages if nb[:2].isdigit()]
    assert stages == sorted(stages) and list(site.pages)[0] == 'index.ipynb'


def test_every_page_renders_with_title_content_and_figures(site, visited):
    for nb, path in site.pages.items():
        facts = visited['pages'][path]
        assert facts['title'].strip() and facts['h1'], f'{path}: no title'
        assert facts['text'] > 300, f'{path}: almost no content ({facts["text"]} characters)'
        broken = [i['src'] for i in facts['images'] if not (i['complete'] and i['width'] > 0)]
        assert not broken, f'{path}: pictures that did not load: {broken}'
        # every picture a notebook cell shows is on its page
        cells = json.loads((site.project/PurePosixPath(path).with_suffix('.ipynb')).read_text())['cells']
        shown = [c for c in cells if c['cell_type'] == 'code' and 'source' in c
                 and not re.search(r'^#\|\s*(output|include):\s*false', ''.join(c['source']), re.M)]
        figures = sum(any(k.startswith('image/') for k in o.get('data', {})) for c in shown for o in c.get('outputs', []))
        assert len(facts['images']) >= figures, f'{path}: {figures} figures in the notebook, {len(facts["images"])} on the page'
    figures_in_site = sum(len(f['images']) for f in visited['pages'].values())
    assert figures_in_site > 0, 'not one figure in the whole site: were the notebooks executed?'


def test_api_reference_covers_the_package(site, visited):
    "Every public function and class of every module has its show_doc entry at the anchor nbdev's links point to."
    from nnunet_nb._modidx import d
    missing, checked = [], 0
    for module, symbols in d['syms'].items():
        for name, (url, _) in symbols.items():
            rest = name[len(module) + 1:]
            if '.' in rest or rest.startswith('_'): continue   # methods and private helpers get no entry of their own
            page, _, anchor = url.partition('#')
            if page not in visited['pages']: missing.append(f'{name}: no page {page}'); continue
            checked += 1
            if anchor not in visited['pages'][page]['ids']: missing.append(f'{name}: no #{anchor} on {page}')
    assert checked > 50 and not missing, '\n'.join(missing)


def test_no_broken_internal_links(site, visited):
    base = visited['base']
    broken = []
    for path, facts in visited['pages'].items():
        for href in facts['links']:
            if not href.startswith(base): continue                 # other hosts: links a reader may follow, not fetched
            parts = urlsplit(href)
            target = unquote(parts.path).lstrip('/') or 'index.html'
            if target.endswith('/'): target += 'index.html'
            if not (site.out/target).is_file(): broken.append(f'{path} -> {href} (no file)'); continue
            if parts.fragment and target.endswith('.html') and unquote(parts.fragment) not in visited['pages'][target]['ids']:
                broken.append(f'{path} -> {href} (no such anchor)')
    assert not broken, '\n'.join(sorted(set(broken)))
    failed = [(url, status) for url, status in visited['responses']
              if url.startswith(base) and status >= 400 and url != base + 'favicon.ico']   # the browser asks for that by itself
    assert not failed, f'requests that failed: {failed}'


def test_pages_request_nothing_from_other_hosts(visited):
    external = sorted({u for u in visited['requests'] if urlsplit(u).scheme in ('http', 'https', 'ws', 'wss')
                       and urlsplit(u).hostname not in ('127.0.0.1', 'localhost')})
    assert not external, f'pages asked other hosts for: {external}'
    assert len(visited['requests']) > len(visited['pages'])        # the check saw the pages' own requests


def test_screenshots_show_a_page(visited):
    from PIL import Image
    for name in ('index.png', 'api_page.png'):
        with Image.open(SHOTS/name) as image:
            assert image.width == 1280 and image.height > 600
            colours = image.convert('RGB').resize((64, 64)).getcolors(64 * 64)
            assert colours is None or len(colours) > 20, f'{name} is (almost) blank'
