enum PlaceholderEngine {}
