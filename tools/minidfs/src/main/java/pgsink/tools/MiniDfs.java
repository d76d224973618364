/*
 * MiniDfs: a throwaway HDFS for pg_sink's tests. It runs Hadoop's MiniDFSCluster
 * (the NameNode and one DataNode, in this JVM) bound to 127.0.0.1, with simple
 * authentication (no Kerberos) and permission checks off, so any user may write
 * anywhere; the superuser is the user running the JVM.
 *
 *   scripts/minidfs.sh start     (runs: java pgsink.tools.MiniDfs OPTIONS)
 *
 * Options:
 *   --port=N        the NameNode's RPC port (default 19000): hdfs://127.0.0.1:N
 *   --http-port=N   the NameNode's HTTP port, which serves WebHDFS under
 *                   /webhdfs/v1 (default: --port + 1). The DataNode's ports (data
 *                   transfer, IPC, HTTP) are ephemeral: clients learn them from the
 *                   NameNode (WebHDFS CREATE and OPEN redirect to the DataNode's
 *                   HTTP port, with the host 127.0.0.1).
 *   --data=DIR      where the NameNode and DataNode keep their storage (formatted
 *                   afresh on every start: every start is an empty file system)
 *   --ready-file=F  written (atomically) once the cluster is up and out of safe
 *                   mode, with two lines: hdfs://127.0.0.1:PORT and
 *                   http://127.0.0.1:HTTP_PORT; removed again on shutdown
 *
 * It runs until SIGTERM or SIGINT, then removes the ready file, stops the cluster
 * and exits with status 0 (1 if the cluster's shutdown failed, or it did not
 * start; 2 for bad arguments).
 */
package pgsink.tools;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.CountDownLatch;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import sun.misc.Signal;

public final class MiniDfs {
  private MiniDfs() {}

  public static void main(String[] args) throws Exception {
    int port = 19000;
    int httpPort = -1;
    String data = null;
    String readyFile = null;
    for (String arg : args) {
      int eq = arg.indexOf('=');
      String key = eq < 0 ? arg : arg.substring(0, eq);
      String value = eq < 0 ? "" : arg.substring(eq + 1);
      switch (key) {
        case "--port" -> port = Integer.parseInt(value);
        case "--http-port" -> httpPort = Integer.parseInt(value);
        case "--data" -> data = value;
        case "--ready-file" -> readyFile = value;
        default -> {
          System.err.println("MiniDfs: unknown option " + arg
              + " (usage: --port=N --http-port=N --data=DIR --ready-file=FILE)");
          System.exit(2);
        }
      }
    }
    if (data == null || data.isEmpty()) {
      System.err.println("MiniDfs: --data=DIR is required");
      System.exit(2);
    }
    if (httpPort < 0) {
      httpPort = port + 1;
    }

    Configuration conf = new Configuration();
    conf.set("hadoop.security.authentication", "simple");
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.setInt("dfs.replication", 1);
    conf.setBoolean("dfs.webhdfs.enabled", true);
    // The DataNode registers (and WebHDFS redirects) as 127.0.0.1, not as this
    // machine's host name, which may not resolve.
    conf.set("dfs.datanode.hostname", "127.0.0.1");
    // Quick shutdown and no background noise.
    conf.setInt("dfs.namenode.safemode.extension", 0);
    conf.setInt("ipc.client.connect.max.retries", 1);

    MiniDFSCluster cluster;
    try {
      cluster = new MiniDFSCluster.Builder(conf, new File(data))
          .nameNodePort(port)
          .nameNodeHttpPort(httpPort)
          .numDataNodes(1)
          .checkDataNodeHostConfig(true)
          .format(true)
          .build(); // waits until the DataNode reported and safe mode is off
    } catch (Exception e) {
      System.err.println("MiniDfs: the cluster did not start: " + e);
      e.printStackTrace();
      System.exit(1);
      return;
    }

    // SIGTERM and SIGINT stop the cluster from the main thread, not from a JVM
    // shutdown hook: during the JVM's shutdown Hadoop's ShutdownHookManager refuses
    // the hook removals the DataNode's shutdown makes, and it fails half-way.
    final Path ready = readyFile == null ? null : Paths.get(readyFile);
    final CountDownLatch signalled = new CountDownLatch(1);
    for (String name : new String[] {"TERM", "INT"}) {
      Signal.handle(new Signal(name), sig -> signalled.countDown());
    }
    // Any other exit: at least the ready file goes.
    Runtime.getRuntime().addShutdownHook(new Thread(() -> deleteReady(ready), "minidfs-ready-file"));

    String rpcUrl = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
    String httpUrl = "http://127.0.0.1:" + cluster.getNameNode().getHttpAddress().getPort();
    if (ready != null) {
      Path tmp = Paths.get(readyFile + ".tmp");
      Files.write(tmp, (rpcUrl + "\n" + httpUrl + "\n").getBytes(StandardCharsets.UTF_8));
      Files.move(tmp, ready, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
    System.err.println("MiniDfs: ready at " + rpcUrl + " (WebHDFS " + httpUrl + "/webhdfs/v1)");
    signalled.await();
    System.err.println("MiniDfs: shutting down");
    deleteReady(ready);
    int status = 0;
    try {
      cluster.shutdown();
    } catch (Throwable e) {
      System.err.println("MiniDfs: the cluster's shutdown failed: " + e);
      status = 1;
    }
    System.exit(status);
  }

  private static void deleteReady(Path ready) {
    try {
      if (ready != null) {
        Files.deleteIfExists(ready);
      }
    } catch (Exception ignored) {
      // best effort
    }
  }
}
