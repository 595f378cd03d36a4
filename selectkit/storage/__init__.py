"""Where artifacts live: the content-addressed cache and the one file digest and cache key."""
