package com.example.bookshop.model;

import com.example.bookshop.util.Ids;

public final class Customer {
  private final String id;
  private final String name;
  private final boolean member;
  public Customer(String name, boolean member) { this.id = Ids.next("C"); this.name = name; this.member = member; }
  public String id() { return id; }
  public String name() { return name; }
  public boolean isMember() { return member; }
}
