enum PlaceholderTokenization {}
