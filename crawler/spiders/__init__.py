"""One spider per image source; `scrapy list` (run in crawler/) shows them."""
