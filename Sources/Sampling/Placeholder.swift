enum PlaceholderSampling {}
