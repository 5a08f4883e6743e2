# Step 3c: only Administrators and SYSTEM may open \\.\HiveTrack. The device's DACL is
# protected and grants SYSTEM and Administrators only (SDDL D:P(A;;FA;;;SY)(A;;FA;;;BA):
# driver/src/security.rs), so a standard user's CreateFile fails with ERROR_ACCESS_DENIED and
# `hivetrack` exits 2 saying so. The emulator applies the same DACL (`io::open`), but only
# real Windows shows that the descriptor the driver builds is the one the I/O manager checks.
# Makes a standard local user, runs `hivetrack stats` as that user (Start-Process -Credential;
# needs the Secondary Logon service, which starts on demand), then as this elevated
# administrator, and removes the user, its profile and its files. Then a non-elevated
# administrator: a second local user in Administrators runs `hivetrack stats` from a scheduled
# task with RunLevel Limited, which gets the UAC-filtered token whose Administrators SID is
# deny-only (Learn, Principal.RunLevel: TASK_RUNLEVEL_LUA, "Tasks will be run with the least
# privileges (LUA)"), so the device must refuse it too; the task, user and profile are
# removed. The same page: the run level "will also be ignored if User Account Control (UAC)
# is turned off" -- then there is no non-elevated administrator, and the check says so.
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0

$asAdmin = Invoke-Hivetrack @('stats')
Write-Result 'an elevated administrator opens the device' ($asAdmin.Code -eq 0) "exit $($asAdmin.Code)"

# The kit may sit in this administrator's profile, which other users cannot read: the
# standard user runs a copy from a folder it is granted read and execute on.
$work = Join-Path $env:PUBLIC 'hivetrack-kit-access'
New-Item -ItemType Directory -Force -Path $work | Out-Null
$copy = Join-Path $work 'hivetrack.exe'
Copy-Item $Exe $copy -Force

$name = 'hivetrack-kit-std'
# A random password meeting the default complexity policy (upper, lower, digit, symbol).
$alphabet = 'ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789'
$plain = 'Aa1!' + (-join (1..20 | ForEach-Object { $alphabet[(Get-Random -Maximum $alphabet.Length)] }))
$password = ConvertTo-SecureString $plain -AsPlainText -Force
Get-LocalUser -Name $name -ErrorAction SilentlyContinue | Remove-LocalUser
$user = New-LocalUser -Name $name -Password $password -AccountNeverExpires `
    -Description 'hivetrack VM kit, step 3c: a standard user (removed by the step)'
# BUILTIN\Users by its SID (group names are localised): its members may log on locally.
try { Add-LocalGroupMember -SID 'S-1-5-32-545' -Member $name } catch { Write-Host "Users: $_" }
$admins = @(Get-LocalGroupMember -SID 'S-1-5-32-544' | Where-Object { $_.SID -eq $user.SID })
Write-Result 'the test user is not an administrator' ($admins.Count -eq 0) "$name ($($user.SID))"
Invoke-Native { icacls.exe $work /grant "${name}:(OI)(CI)RX" } | Out-Null

# The redirections are files this session creates and hands to the child, so the user needs
# no write access to them.
$stdout = Join-Path $Results 'access-standard-user.out.txt'
$stderr = Join-Path $Results 'access-standard-user.err.txt'
$credential = New-Object System.Management.Automation.PSCredential("$env:COMPUTERNAME\$name", $password)
$code = $null
try {
    $p = Start-Process -FilePath $copy -ArgumentList 'stats' -Credential $credential `
        -WorkingDirectory $work -RedirectStandardOutput $stdout -RedirectStandardError $stderr `
        -Wait -PassThru
    $p.WaitForExit()
    $code = $p.ExitCode
} catch {
    Write-Result 'hivetrack runs as the standard user' $false "$_"
}
if ($null -ne $code) {
    $said = ((Get-Content $stdout, $stderr -ErrorAction SilentlyContinue) -join "`n")
    # Exit 2 is "driver unavailable" (not installed, not running, access denied); the
    # message tells which.
    Write-Result 'a standard user is refused the device (exit 2)' ($code -eq 2) "exit $code"
    Write-Result 'the refusal says access was denied' ($said -match 'was denied') $said
    Write-Result 'the standard user gets no statistics' ($said -notmatch 'COUNTER') $said
}

Get-CimInstance Win32_UserProfile -ErrorAction SilentlyContinue |
    Where-Object { $_.SID -eq $user.SID.Value } | Remove-CimInstance -ErrorAction SilentlyContinue
Remove-LocalUser -Name $name
Write-Result 'the test user is removed' (-not (Get-LocalUser -Name $name -ErrorAction SilentlyContinue)) $name

# A non-elevated administrator. Administrators hold "Log on as a batch job" by default, so a
# task may run as this new user with its password; RunLevel Limited gives the filtered token.
$lua = (Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System' `
    -Name EnableLUA -ErrorAction SilentlyContinue).EnableLUA
if ($lua -ne 1) {
    Write-Host "SKIPPED: UAC is off (EnableLUA '$lua'): every administrator is elevated, so there is no non-elevated administrator to refuse."
    Remove-Item $work -Recurse -Force -ErrorAction SilentlyContinue
    Write-Host ''
    Write-Host "Results in $Results ($script:Failures failure(s))."
    exit $script:Failures
}
$adminName = 'hivetrack-kit-adm'
Get-LocalUser -Name $adminName -ErrorAction SilentlyContinue | Remove-LocalUser
$adminUser = New-LocalUser -Name $adminName -Password $password -AccountNeverExpires `
    -Description 'hivetrack VM kit, step 3c: a non-elevated administrator (removed by the step)'
Add-LocalGroupMember -SID 'S-1-5-32-544' -Member $adminName
Invoke-Native { icacls.exe $work /grant "${adminName}:(OI)(CI)M" } | Out-Null
$limitedOut = Join-Path $work 'limited.out.txt'
$limitedCode = Join-Path $work 'limited.code.txt'
Remove-Item $limitedOut, $limitedCode -ErrorAction SilentlyContinue
$task = 'hivetrack-kit-limited-admin'
# cmd's delayed expansion (!errorlevel!) reads the exit code after hivetrack ran.
$action = New-ScheduledTaskAction -Execute 'cmd.exe' -WorkingDirectory $work `
    -Argument "/v:on /c `"`"$copy`" stats > `"$limitedOut`" 2>&1 & echo !errorlevel! > `"$limitedCode`"`""
Unregister-ScheduledTask -TaskName $task -Confirm:$false -ErrorAction SilentlyContinue
try {
    Register-ScheduledTask -TaskName $task -Action $action -User "$env:COMPUTERNAME\$adminName" `
        -Password $plain -RunLevel Limited | Out-Null
    Start-ScheduledTask -TaskName $task
    $deadline = (Get-Date).AddSeconds(60)
    while (-not (Test-Path $limitedCode) -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 500 }
    Start-Sleep -Milliseconds 500
    $limited = (Get-Content $limitedCode -ErrorAction SilentlyContinue | Select-Object -First 1)
    $saidLimited = ((Get-Content $limitedOut -ErrorAction SilentlyContinue) -join "`n")
    Copy-Item $limitedOut (Join-Path $Results 'access-limited-admin.out.txt') -ErrorAction SilentlyContinue
    Write-Result 'a non-elevated administrator is refused the device (exit 2)' ("$limited".Trim() -eq '2') "exit '$limited'"
    Write-Result 'the refusal says access was denied and to run elevated' `
        ($saidLimited -match 'was denied' -and $saidLimited -match 'elevated') $saidLimited
    Write-Result 'the non-elevated administrator gets no statistics' ($saidLimited -notmatch 'COUNTER') $saidLimited
} catch {
    Write-Result 'hivetrack runs as a non-elevated administrator' $false "$_"
}
Unregister-ScheduledTask -TaskName $task -Confirm:$false -ErrorAction SilentlyContinue
Get-CimInstance Win32_UserProfile -ErrorAction SilentlyContinue |
    Where-Object { $_.SID -eq $adminUser.SID.Value } | Remove-CimInstance -ErrorAction SilentlyContinue
Remove-LocalUser -Name $adminName
Write-Result 'the administrator test user is removed' (-not (Get-LocalUser -Name $adminName -ErrorAction SilentlyContinue)) $adminName
Remove-Item $work -Recurse -Force -ErrorAction SilentlyContinue
Write-Host ''
Write-Host "Results in $Results ($script:Failures failure(s))."
exit $script:Failures
