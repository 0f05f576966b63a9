"""The compose test's image web: the demo's generated shape galleries (workers/demo/world.py),
served on port 8000 inside the compose network. Runs in the kd3 image: python /test/web.py"""

import os
import signal
import sys

from crawler.localweb import LocalWeb
from workers.demo import world

per_class = int(os.environ.get("KD3_TEST_PER_CLASS", "30"))
x_eval, _ = world.original_dataset(200, seed=1)
web = world.build_web(per_class, x_eval, seed=2)
local = LocalWeb(host="0.0.0.0", port=8000)
for page, html in web.pages.items():
    local.add_html(page, html)
for image in web.images:
    local.add_bytes(image.path, image.data, image.content_type)
local.add_bytes("/robots.txt", b"User-agent: *\nAllow: /\n", "text/plain")
local.start()
print(f"test web: {len(web.pages)} pages, {len(web.images)} images on :8000", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.pause()
