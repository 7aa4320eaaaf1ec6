package com.example.bookshop.catalog;

import java.util.List;
import java.util.stream.Collectors;

public final class Search {
  private final Catalog catalog;
  public Search(Catalog catalog) { this.catalog = catalog; }
  public List<CatalogEntry> run(SearchQuery query) { return catalog.entries().stream().filter(e -> query.matches(e.book())).sorted(Ranking.byStockThenTitle()).collect(Collectors.toList()); }
}
