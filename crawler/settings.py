"""The crawler's Scrapy settings. `crawler.run.crawl` and `scrapy crawl` override them.

Scrapy settings keep their Scrapy names; kd3's own settings start with KD3_. A job spec or
`kd3 crawl -s` may override only those in crawler/allowed_settings.py. What a crawl is asked to
do (per-class target, seeds, networks, ...) has its defaults in crawler/options.py, taken here.
"""

import os

from crawler.options import CrawlOptions

_asked = CrawlOptions()  # the defaults of a crawl's options

BOT_NAME = "kd3"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

# -- kd3: where images go, what to collect -------------------------------------------------------
KD3_POOL = None  # pool directory (required)
KD3_CRAWL_ID = None  # names POOL/crawls/<id>/stats.json and the hash kd3:crawl:<id>:stats
KD3_REDIS_URL = os.environ.get("KD3_REDIS_URL")  # optional: live stats (and shared crawls)
KD3_PER_CLASS = _asked.per_class  # stop asking for a class once the pool holds this many
KD3_QUERY_TEMPLATES = ["{}", "{} photo"]  # applied to the class name and each user keyword
KD3_MAX_PAGES = 10  # API / results pages per query
KD3_SOURCE_URLS = {
    "wikimedia": "https://commons.wikimedia.org/w/api.php",
    "openverse": "https://api.openverse.org/v1/images/",
    "flickr": "https://api.flickr.com/services/rest/",
    "bing": "https://www.bing.com/images/search",
}
KD3_FLICKR_API_KEY = os.environ.get("FLICKR_API_KEY", "")
KD3_WIKIMEDIA_THUMB_WIDTH = 640  # ask Commons for a thumbnail this wide instead of the original
KD3_SEEDS = _asked.seeds  # generic site spider: page or sitemap URLs
KD3_SITE_DEPTH = 3  # generic site spider: links followed from a seed
# Set by the crawl loop (steer.loop) for its rounds, from the job (crawler.options.CrawlJob).
KD3_ROUND = 1  # recorded with every image (manifest column crawl_round)
KD3_CLASS_QUERIES = None  # {class: [terms]}: exactly these searches this round
KD3_CLASS_TARGETS = {}  # {class: images the pool may hold}, instead of KD3_PER_CLASS
KD3_SKIP_POOL = ""  # a pool whose image URLs are not fetched again (the crawl loop's probe)
KD3_RECORD_LINKS = False  # the site spider writes POOL/crawls/<id>/links.json (the crawl loop)
KD3_SEED_CLASSES = {}  # {seed page: [class, priority]}: site spider takes every image for it

# -- kd3: validation and storage -----------------------------------------------------------------
KD3_MAX_PIXELS = 40_000_000  # decompression bombs are refused from the header
KD3_MIN_SIDE = 32
KD3_ALLOWED_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]
KD3_FLUSH_ITEMS = 256  # pool.add batch size ...
KD3_FLUSH_SECONDS = 2.0  # ... or at least this often, so a watched crawl progresses
KD3_STATS_FLUSH_SECONDS = 1.0  # how often the stats file and hash are updated

# -- kd3: safety ---------------------------------------------------------------------------------
# Non-global addresses (private, loopback, link-local, ...) are refused unless inside one of these
# networks, e.g. ["127.0.0.1/32"] for tests and the demo (as narrow as possible: 127.0.0.0/8 would
# let a redirect reach 127.0.0.2). Set only with --allow-network, never as a setting.
KD3_ALLOWED_NETWORKS = _asked.allow_networks
KD3_STATIC_HOSTS = _asked.hosts  # host name -> address, answered before DNS (tests map names)
KD3_RETRY_BACKOFF_BASE = 1.0  # seconds; doubled per retry of a 429/5xx without Retry-After
KD3_RETRY_BACKOFF_MAX = 60.0
KD3_RETRY_AFTER_MAX = 300.0  # a longer Retry-After gives up instead of waiting

# -- kd3: scale-out (several processes sharing one crawl through Redis) ---------------------------
KD3_SHARED = _asked.shared
KD3_IDLE_CLOSE_SECONDS = 10.0  # a shared crawl closes once its queue stayed empty this long
KD3_SHARED_POLL_SECONDS = 0.5  # how often an idle process looks at the shared queue

# -- Scrapy: politeness ----------------------------------------------------------------------------
USER_AGENT = "kd3-crawler/0.1 (+https://github.com/kd3/kd3; image research crawler)"
ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS = 32
CONCURRENT_REQUESTS_PER_DOMAIN = 4
# Scrapy starts CONCURRENT_ITEMS asyncio tasks for every callback's output, however small; an
# image response yields one item, so the default 100 made task creation the crawl's top cost
# (profiled: 530k tasks for 5,000 images). Outputs are small here, so a few workers suffice.
CONCURRENT_ITEMS = 4
DOWNLOAD_DELAY = 0
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 0.5
AUTOTHROTTLE_MAX_DELAY = 30.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 2.0
RETRY_ENABLED = True
RETRY_TIMES = 3
RETRY_HTTP_CODES = [429, 500, 502, 503, 504, 522, 524, 408]
DOWNLOAD_TIMEOUT = 30
DOWNLOAD_MAXSIZE = 20 * 1024 * 1024
DOWNLOAD_WARNSIZE = 0
REDIRECT_MAX_TIMES = 5
COOKIES_ENABLED = False
DNS_TIMEOUT = 10
TWISTED_DNS_RESOLVER = "crawler.resolver.PolicyResolver"
TWISTED_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
# Only http and https: the other built-in handlers are switched off.
DOWNLOAD_HANDLERS = {"data": None, "file": None, "ftp": None, "s3": None}
LOG_LEVEL = "INFO"
TELNETCONSOLE_ENABLED = False

DOWNLOADER_MIDDLEWARES = {
    # Requests: class targets and Scrapy's offsite filter (50) need no network; then the scheme
    # and address policy, before robots.txt (100) or anything else connects.
    "crawler.middlewares.ClassTargetMiddleware": 40,
    "crawler.middlewares.AddressPolicyMiddleware": 60,
    # Responses run from high to low numbers: count raw responses, then retry/redirect, then
    # check X-Robots-Tag on the final response.
    "crawler.middlewares.XRobotsTagMiddleware": 540,
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "crawler.middlewares.BackoffRetryMiddleware": 550,
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "crawler.middlewares.LoopAwareRedirectMiddleware": 600,
    "crawler.middlewares.TrafficStatsMiddleware": 950,
}
ITEM_PIPELINES = {"crawler.pipelines.PoolPipeline": 300}
EXTENSIONS = {"crawler.stats.SharedIdleExtension": 10}
STATS_CLASS = "crawler.stats.CrawlStatsCollector"  # kd3's counters also go to the pool and Redis

# scrapy-redis, used only when KD3_SHARED (crawler.run switches the scheduler in).
SCHEDULER_PERSIST = True  # the queue and dupefilter outlive one process (resume, scale-out)
REDIS_START_URLS_AS_SET = False
DEFAULT_DROPITEM_LOG_LEVEL = "DEBUG"  # every drop is counted in the stats with its reason
REMOTE_CONTROL_ENABLED = False  # no control port: a crawler must not listen for commands
