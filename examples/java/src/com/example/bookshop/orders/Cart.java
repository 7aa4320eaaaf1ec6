package com.example.bookshop.orders;

import com.example.bookshop.catalog.Catalog;
import com.example.bookshop.catalog.CatalogEntry;
import com.example.bookshop.catalog.Stock;
import com.example.bookshop.model.Customer;
import com.example.bookshop.model.Isbn;
import com.example.bookshop.model.Order;
import com.example.bookshop.model.OrderLine;

public final class Cart {
  private final Order order;
  private final Catalog catalog;
  public Cart(Customer customer, Catalog catalog) { this.order = new Order(customer); this.catalog = catalog; }
  public Cart add(Isbn isbn, int quantity) { CatalogEntry entry = catalog.find(isbn); if (!Stock.available(entry, quantity)) { throw new IllegalStateException("out of stock: " + entry.book().title()); } order.add(new OrderLine(entry.book(), quantity)); return this; }
  public Order order() { return order; }
}
