package com.example.bookshop.model;

import com.example.bookshop.util.Ids;
import com.example.bookshop.util.Money;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

public final class Order {
  private final String id = Ids.next("O");
  private final Customer customer;
  private final List<OrderLine> lines = new ArrayList<>();
  public Order(Customer customer) { this.customer = customer; }
  public String id() { return id; }
  public Customer customer() { return customer; }
  public void add(OrderLine line) { lines.add(line); }
  public List<OrderLine> lines() { return Collections.unmodifiableList(lines); }
  public Money subtotal() { Money total = Money.zero(); for (OrderLine line : lines) { total = total.plus(line.subtotal()); } return total; }
}
